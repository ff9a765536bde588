import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from txwatch.integrations.huggingface import TxwatchCallback

# A tiny GPT-2 built from its config: nothing is downloaded.
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32))
tokens = torch.randint(0, 128, (256, 32))
dataset = [{"input_ids": t, "labels": t} for t in tokens]

args = TrainingArguments(output_dir="/tmp/txwatch-hf-example", max_steps=40, per_device_train_batch_size=8,
                         eval_strategy="steps", eval_steps=20, logging_steps=10, report_to=[],
                         save_strategy="no", use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset[:32],
                  callbacks=[TxwatchCallback(run="hf-example", project="examples")])
trainer.train()
