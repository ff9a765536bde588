"""Healthy runs that set traps for the rules: each trains well (``checks.learns``), and each does something
a rule could mistake for a fault. Any warning or critical diagnosis on them is a false alarm."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.scenarios import checks, data, models, schedules
from benchmarks.scenarios.spec import Job, Scenario, variants


def noisy_small_batch(seed: int) -> Job:
    """Batch size 4 for 1500 steps (Adam 3e-4): a loss that jumps around batch to batch for a long time."""
    task = data.vectors(seed=seed, noise=0.15)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    return Job(model, [opt], task.batches(4, seed), data.classify, steps=1500, val_batch=task.val_batch(),
               val_every=100)


def warmup_to_zero(seed: int) -> Job:
    """The pre-LN GPT, AdamW with 50 warmup steps then cosine to exactly 0 at step 500, accumulation over 2
    micro-batches, clipping at 1.0: a warmup transient at the start, no update at all at the end."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    return Job(model, [opt], lm.batches(8, seed), data.next_token, steps=500, accumulate=2, clip=1.0,
               schedulers=[schedules.warmup_cosine(opt, 50, 500)], val_batch=lm.val_batch(), val_every=50)


def unfreeze_at_peak(seed: int) -> Job:
    """The residual CNN trains its head alone for 150 steps, then its backbone is unfrozen with the LR at its
    peak (warmup over 100 steps, then constant): the gradient norms and update sizes change at once."""
    task = data.images(seed=seed)
    model = models.ResCNN()
    backbone = [model.stem, model.blocks]
    for part in backbone:
        models.freeze(part)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    job = Job(model, [opt], task.batches(32, seed), data.classify, steps=450,
              schedulers=[schedules.warmup_cosine(opt, 100, 100_000)], val_batch=task.val_batch(), val_every=50)
    job.events[150] = lambda: [models.freeze(part, frozen=False) for part in backbone]
    return job


def plateau_escape(seed: int) -> Job:
    """A small-initialised tanh MLP learning a 3-bit parity under SGD+momentum: the loss sits at ln 2 for
    hundreds of steps, then escapes to near zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (2560, 8), generator=g).float() * 2 - 1
    y = ((x[:, 0] * x[:, 1] * x[:, 2]) > 0).long()
    task = data.Task("vector", x[:2048], y[:2048], x[2048:], y[2048:])
    model = models.mlp([8, 32, 32, 2], nn.Tanh)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=1600, val_batch=task.val_batch(),
               val_every=100)


def frozen_backbone(seed: int) -> Job:
    """The ViT under Lightning with its patch embedding and blocks frozen (a pretrained backbone): only the
    final norm and head train, AdamW with linear decay."""
    task = data.images(seed=seed)
    model = models.TinyViT()
    for part in (model.patch, model.blocks):
        models.freeze(part)
    model.pos.requires_grad_(False)
    model.cls.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=400,
               schedulers=[schedules.warmup_linear(opt, 20, 400)], val_batch=task.val_batch(), val_every=50)


def lr0_group(seed: int) -> Job:
    """The GPT with two param groups: group 0 (the position embedding, kept fixed) at lr 0, group 1 (the
    rest) at 3e-3 with warmup and cosine decay. ``lr/0`` is 0 throughout."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT()
    embed = [model.pos.weight]
    rest = [p for p in model.parameters() if all(p is not e for e in embed)]
    opt = torch.optim.AdamW([{"params": embed, "lr": 0.0}, {"params": rest, "lr": 3e-3}])
    return Job(model, [opt], lm.batches(16, seed), data.next_token, steps=400, clip=1.0,
               schedulers=[schedules.warmup_cosine(opt, 40, 400, 0.1)], val_batch=lm.val_batch(), val_every=50)


def tied_lightning(seed: int) -> Job:
    """The GPT (head tied to the embedding) under Lightning, accumulate_grad_batches=2, gradient_clip_val=1.0,
    bf16-mixed, warmup then cosine."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    return Job(model, [opt], lm.batches(8, seed), data.next_token, steps=400, accumulate=2, clip=1.0,
               precision="bf16", schedulers=[schedules.warmup_cosine(opt, 40, 400, 0.1)], val_batch=lm.val_batch(),
               val_every=50)


def compiled_mlp(seed: int) -> Job:
    """The MLP classifier wrapped in ``torch.compile(backend="eager")`` (parameter names gain ``_orig_mod.``),
    SGD+momentum with a step decay x0.1 at step 200."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=400, compile=True,
               schedulers=[schedules.step_decay(opt, 200)], val_batch=task.val_batch(), val_every=50)


def bf16_decay_to_zero(seed: int) -> Job:
    """The ViT in bf16 autocast, AdamW, warmup then cosine to exactly 0: the last updates are ~0."""
    task = data.images(seed=seed)
    model = models.TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=400, precision="bf16", clip=1.0,
               schedulers=[schedules.warmup_cosine(opt, 30, 400)], val_batch=task.val_batch(), val_every=50)


def bert_finetune(seed: int) -> Job:
    """The tiny BERT fine-tuned by the HF Trainer the usual way: AdamW 5e-4, warmup + linear decay,
    gradient_accumulation_steps=2, max_grad_norm=1.0. The attention key bias's gradient is zero by
    construction (softmax is shift-invariant), and query/key gradients are tiny at the 0.02 init."""
    task = data.bert_texts(seed=seed)
    model = models.bert_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    return Job(model, [opt], task.batches(16, seed), data.hf_loss, steps=300, accumulate=2, clip=1.0,
               schedulers=[schedules.warmup_linear(opt, 30, 300)], val_batch=task.val_batch(), val_every=50)


def micro_batch_logging(seed: int) -> Job:
    """The LSTM with accumulation over 4 micro-batches, and ``monitor.log(loss=...)`` called for every
    micro-batch (so each step's loss is its last micro-batch's), linear decay."""
    task = data.sequences(seed=seed)
    model = models.RNNClassifier("lstm")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Job(model, [opt], task.batches(16, seed), data.classify, steps=300, accumulate=4, log_micro=True,
               schedulers=[schedules.warmup_linear(opt, 10, 300)], val_batch=task.val_batch(), val_every=50)


class EncoderHead(nn.Module):
    """A GRU encoder and a linear head, trained by two optimizers (manual optimization)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = models.RNNClassifier("gru")
        self.head = nn.Linear(4, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(tokens)))


def manual_two_optimizers(seed: int) -> Job:
    """Lightning manual optimization stepping two optimizers (Adam for the encoder, SGD for the head)."""
    task = data.sequences(seed=seed)
    model = EncoderHead()
    enc = torch.optim.Adam(model.encoder.parameters(), lr=3e-3)
    head = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)
    return Job(model, [enc, head], task.batches(32, seed), data.classify, steps=300, manual_two=True, clip=1.0,
               val_batch=task.val_batch(), val_every=50)


def fp16_healthy(seed: int) -> Job:
    """The MLP classifier in fp16 with a GradScaler (default settings: a few calibration skips at the start),
    SGD+momentum with a step decay."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=400, precision="fp16",
               schedulers=[schedules.step_decay(opt, 150, 0.3)], val_batch=task.val_batch(), val_every=50)


def sane_restarts(seed: int) -> Job:
    """The MLP classifier under SGD+momentum with warm restarts every 200 steps to a sane peak of 0.05."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=600,
               schedulers=[schedules.restarts(opt, 200)], val_batch=task.val_batch(), val_every=50)


def lora_gpt(seed: int) -> Job:
    """A (randomly initialised, "pretrained") MLP with every Linear frozen behind a LoRA adapter of rank 4
    (B starts at 0, so A's first gradient is exactly 0); AdamW 3e-3 on the adapters only."""
    task = data.vectors(seed=seed)
    model = models.lora(models.mlp([20, 128, 128, 4]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=400, clip=1.0,
               schedulers=[schedules.warmup_cosine(opt, 20, 400, 0.1)], val_batch=task.val_batch(), val_every=50)


def post_ln_warmup(seed: int) -> Job:
    """A 2-layer post-LN transformer LM with 100 warmup steps to 2e-3 (Adam), clipped: the way post-LN trains."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT(post_ln=True)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    return Job(model, [opt], lm.batches(16, seed), data.next_token, steps=400, clip=1.0,
               schedulers=[schedules.warmup_cosine(opt, 100, 400, 0.1)], val_batch=lm.val_batch(), val_every=150)


def hf_vit(seed: int) -> Job:
    """The ViT under the HF Trainer, AdamW with a step decay, evaluated every 50 steps, default clipping."""
    task = data.images(seed=seed)
    model = models.TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=300, clip=1.0,
               schedulers=[schedules.step_decay(opt, 150, 0.3)], val_batch=task.val_batch(), val_every=50)


def _healthy(trap: str, arch: str, trainer: str, make, quick: bool = False) -> list[Scenario]:
    return variants(f"healthy.{trap}", arch, trainer, make, seeds=(0, 1, 2), quick=quick, shows=checks.learns(),
                    what=make.__doc__)


SCENARIOS: list[Scenario] = [
    *_healthy("noisy-small-batch", "mlp", "plain", noisy_small_batch, quick=True),
    *_healthy("warmup-decay-to-0", "gpt-preln", "plain", warmup_to_zero, quick=True),
    *_healthy("unfreeze-at-peak", "rescnn", "plain", unfreeze_at_peak),
    *_healthy("plateau-then-escape", "mlp", "plain", plateau_escape, quick=True),
    *_healthy("frozen-backbone", "vit", "lightning", frozen_backbone, quick=True),
    *_healthy("lr0-group", "gpt-preln", "plain", lr0_group, quick=True),
    *_healthy("tied-weights", "gpt-preln", "lightning", tied_lightning, quick=True),
    *_healthy("torch-compile", "mlp", "plain", compiled_mlp, quick=True),
    *_healthy("bf16-decay-to-0", "vit", "plain", bf16_decay_to_zero),
    *_healthy("structurally-zero-grads", "bert", "hf", bert_finetune, quick=True),
    *_healthy("loss-per-micro-batch", "lstm", "plain", micro_batch_logging),
    *_healthy("manual-two-optimizers", "gru", "lightning", manual_two_optimizers, quick=True),
    *_healthy("fp16-grad-scaler", "mlp", "plain", fp16_healthy, quick=True),
    *_healthy("sane-restarts", "mlp", "plain", sane_restarts),
    *_healthy("lora-partly-frozen", "lora-mlp", "plain", lora_gpt, quick=True),
    *_healthy("post-ln-with-warmup", "post-ln", "plain", post_ln_warmup),
    *_healthy("hf-step-decay", "vit", "hf", hf_vit),
]
