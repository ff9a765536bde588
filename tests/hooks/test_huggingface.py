"""The transformers callback with a real Trainer on a tiny GPT-2 built from config (nothing downloaded)."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from txwatch_hooks.integrations.huggingface import TxwatchCallback  # noqa: E402
from txwatch_hooks.testing import MemorySender  # noqa: E402

pytestmark = pytest.mark.slow


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, 16), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class KeepLogs(TrainerCallback):
    """The Trainer's own figures, as the independent reference."""

    def __init__(self):
        self.logs = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.setdefault(state.global_step, {}).update(logs or {})


def _trainer(tmp_path, callbacks, **overrides):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=64))
    args = dict(output_dir=str(tmp_path), report_to=[], max_steps=6, per_device_train_batch_size=4,
                per_device_eval_batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-3,
                max_grad_norm=0.01, logging_steps=1, eval_strategy="steps", eval_steps=3, save_strategy="no",
                use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    args.update(overrides)
    return Trainer(model=model, args=TrainingArguments(**args), train_dataset=TokenData(64, 0),
                   eval_dataset=TokenData(16, 1), callbacks=callbacks)


def test_trainer_is_watched_end_to_end(tmp_path):
    sink = MemorySender()
    keep = KeepLogs()
    callback = TxwatchCallback(run="hf-e2e", project="frameworks", sender=sink, grad_every=1, update_every=3,
                               schedule_delay_s=0.02, system_interval_s=0, crash_hooks=False)
    _trainer(tmp_path, [callback, keep]).train()
    assert callback.monitor.closed
    steps = list(range(1, 7))
    loss = dict(sink.series("loss"))
    assert sorted(loss) == steps
    total = dict(sink.series("grad_norm_total"))
    for step in steps:
        assert loss[step] == pytest.approx(keep.logs[step]["loss"], rel=1e-3)  # the Trainer's own loss
        assert total[step] == pytest.approx(keep.logs[step]["grad_norm"], rel=1e-4)  # pre-clip, as it reports
        assert total[step] > 0.01 * 10  # so clipping at 0.01 really changed the gradients
    val = dict(sink.series("val_loss"))
    assert sorted(val) == [3, 6]
    assert val[3] == pytest.approx(keep.logs[3]["eval_loss"], rel=1e-6)
    assert "val_runtime" in sink.names()
    assert sorted(dict(sink.series("update_ratio_max"))) == [1, 2, 3, 4, 5, 6]  # dense over the first 20 steps
    assert any(n.startswith("grad_norm/transformer.h.0.attn") for n in sink.names())
    lr = dict(sink.series("lr/0"))
    for step in steps:
        assert lr[step] == pytest.approx(keep.logs[step]["learning_rate"], rel=1e-6)
    first = sink.batches[0]
    assert first["run"] == "hf-e2e" and first["run_info"]["config"]["learning_rate"] == 1e-3
    (end,) = sink.events("end")
    assert end["status"] == "finished" and end["step"] == 6


class Scales(TrainerCallback):
    """Before each optimizer step: the scale, and the unscaled gradient norm computed here."""

    def __init__(self):
        self.scales, self.norms = {}, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        scale = optimizer.scaler.get_scale()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.scales[state.global_step + 1] = scale
        self.norms[state.global_step + 1] = torch.nn.utils.get_total_norm(grads).item() / scale


def test_an_fp16_scaler_is_found_and_its_skipped_step_counted(tmp_path):
    """transformers runs fp16 only on an accelerator (accelerate refuses it on the CPU), so here the Trainer's
    accelerator gets a CPU GradScaler: the same path as fp16 for the scaling (``accelerator.backward``), the
    step (``AcceleratedOptimizer.step`` through ``scaler.step`` and ``update``) and the default fused AdamW,
    which skips inside its step. Step 2's loss is made to overflow once scaled. The scaler is found on the
    optimizer the Trainer hands its callbacks, without being passed."""
    sink = MemorySender()
    scales = Scales()
    callback = TxwatchCallback(run="hf-fp16", sender=sink, grad_every=2, update_every=2, schedule_delay_s=0.02,
                               system_interval_s=0, crash_hooks=False)
    trainer = _trainer(tmp_path, [callback, scales], max_grad_norm=0.0)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")

    def overflow_at_step_2(module, args, output):
        if module.training and trainer.state.global_step == 1:
            output["loss"] = output["loss"] * 1e34  # finite, but not once multiplied by the scale

    trainer.model.register_forward_hook(overflow_at_step_2)
    trainer.train()
    skipped = {s for s, norm in scales.norms.items() if not math.isfinite(norm)}
    assert skipped == {2}
    total = dict(sink.series("grad_norm_total"))
    assert sorted(total) == [1, 4, 6]
    assert total == pytest.approx({s: scales.norms[s] for s in total}, rel=1e-4)
    assert set(dict(sink.series("grad_nonfinite")).values()) == {0.0}
    assert sorted(dict(sink.series("update_ratio_max"))) == [1, 3, 4, 5, 6]  # step 2 changed no parameter
    assert dict(sink.series("loss_scale")) == {s: scales.scales[s] for s in (1, 2, 4, 6)}
    assert dict(sink.series("scaler_skipped")) == {1: 0.0, 2: 1.0, 4: 1.0, 6: 1.0}


def test_what_the_trainer_logs_is_stored_as_series_without_repeating_loss_or_evaluation(tmp_path):
    sink = MemorySender()
    keep = KeepLogs()
    callback = TxwatchCallback(run="hf-logs", sender=sink, schedule_delay_s=0.02, system_interval_s=0,
                               crash_hooks=False)
    trainer = _trainer(tmp_path, [callback, keep])
    original_log = trainer.log

    def log_with_a_figure_of_ones_own(logs, *args, **kwargs):  # what a Trainer subclass adds to its logs
        if "grad_norm" in logs:
            logs = {**logs, "tokens/seen": float(trainer.state.global_step * 32)}
        return original_log(logs, *args, **kwargs)

    trainer.log = log_with_a_figure_of_ones_own
    trainer.train()
    steps = list(range(1, 7))
    for name, key in (("grad_norm", "grad_norm"), ("learning_rate", "learning_rate"), ("tokens_seen", "tokens/seen")):
        series = sink.series(name)
        assert [s for s, _ in series] == steps, name  # each step once
        assert dict(series) == pytest.approx({s: keep.logs[s][key] for s in steps}, rel=1e-6)
    assert dict(sink.series("train_runtime")).keys() == {6}  # the end-of-training summary, at its step
    assert [s for s, _ in sink.series("loss")] == steps  # the model's loss, not again from the logs
    assert [s for s, _ in sink.series("val_loss")] == [3, 6]  # evaluation only from on_evaluate
    assert not {n for n in sink.names() if n.startswith("eval_") or n == "epoch"}


def test_micro_batch_losses_of_different_shapes_are_combined(tmp_path):
    """A model may hand back a () loss in one micro-batch and a (1,) one in the next: still one mean."""
    from types import SimpleNamespace

    sink = MemorySender()
    callback = TxwatchCallback(run="hf-shapes", project="frameworks", sender=sink, schedule_delay_s=0.02,
                               system_interval_s=0, crash_hooks=False)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=64))
    state = SimpleNamespace(global_step=0)
    callback.on_train_begin(None, state, None, model=model, optimizer=None)
    callback._losses = [torch.tensor(1.0), torch.tensor([3.0])]
    state.global_step = 1
    callback.on_step_end(None, state, None)
    callback.on_train_end(None, state, None)
    assert sink.series("loss") == [(1, 2.0)]
