"""The three ways a user trains, each watched through txwatch's public surface.

- ``plain``: a hand-written loop under ``txwatch.watch(model, optimizer, ...)``: gradient accumulation,
  clipping, bf16 autocast or fp16 with a GradScaler, validation every ``val_every`` steps.
- ``lightning``: a ``lightning.Trainer`` with ``txwatch.integrations.lightning.TxwatchCallback``
  (``accumulate_grad_batches``, ``gradient_clip_val``, ``bf16-mixed``, manual optimization of two optimizers).
- ``hf``: a transformers ``Trainer`` with ``txwatch.integrations.huggingface.TxwatchCallback``
  (``gradient_accumulation_steps``, ``max_grad_norm``, ``bf16``); the job's optimizer and schedule are passed in.

``run(job, trainer, watch_kwargs)`` trains the job; an exception from the training (a crash scenario) goes on
to the caller after the integration reported it.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from benchmarks.scenarios.data import Batch, LossFn
from benchmarks.scenarios.spec import Job


def run(job: Job, trainer: str, watch_kwargs: dict[str, Any]) -> None:
    """Train ``job`` with ``trainer`` ("plain", "lightning" or "hf") under txwatch."""
    _arm_events(job)
    {"plain": run_plain, "lightning": run_lightning, "hf": run_hf}[trainer](job, watch_kwargs)


def _arm_events(job: Job) -> None:
    """Run ``job.events[k]`` right after the k-th optimizer step, whichever trainer steps the optimizer."""
    if not job.events:
        return
    count = 0

    def after_step(*_: Any) -> None:
        nonlocal count
        count += 1
        action = job.events.get(count)
        if action is not None:
            action()

    job.optimizers[0].register_step_post_hook(after_step)


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast("cpu", dtype=torch.float16)
    return contextlib.nullcontext()


# -- the plain loop -------------------------------------------------------------------------------------------


def run_plain(job: Job, watch_kwargs: dict[str, Any]) -> None:
    import txwatch

    model: nn.Module = torch.compile(job.model, backend="eager") if job.compile else job.model
    scaler = job.scaler if job.scaler is not None else (
        torch.amp.GradScaler("cpu") if job.precision == "fp16" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    nonfinite = 0
    with txwatch.watch(model, job.optimizers[0], scaler=scaler, **watch_kwargs) as monitor:
        for step in range(1, job.steps + 1):
            total = torch.zeros(())
            for _ in range(job.accumulate):
                batch = next(job.batches)
                model.train()
                with _autocast(job.precision):
                    loss = job.loss(model, batch)
                part = loss / job.accumulate
                (scaler.scale(part) if scaler is not None else part).backward()
                total = total + loss.detach().float()
                if job.log_micro:
                    monitor.log(loss=loss.detach())
                if job.sched_per_micro:
                    for sched in job.schedulers:
                        sched.step()
            if job.clip is not None:
                if scaler is not None:
                    for opt in job.optimizers:
                        scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, job.clip)
            for opt in job.optimizers:
                scaler.step(opt) if scaler is not None else opt.step()
            if scaler is not None:
                scaler.update()
            for opt in job.optimizers:
                opt.zero_grad(set_to_none=True)
            if not job.sched_per_micro:
                for sched in job.schedulers:
                    sched.step()
            mean = total / job.accumulate
            if not job.log_micro:
                monitor.log(loss=mean)
            if job.val_every and step % job.val_every == 0 and job.val_batch is not None:
                monitor.log(val_loss=evaluate(model, job.loss, job.val_batch, job.precision))
            nonfinite = nonfinite + 1 if not math.isfinite(mean.item()) else 0
            if nonfinite >= job.stop_after_nonfinite:
                break


def evaluate(model: nn.Module, loss: LossFn, batch: Batch, precision: str = "fp32") -> float:
    """The loss on ``batch`` in eval mode, without gradients."""
    model.eval()
    with torch.no_grad(), _autocast(precision):
        value = loss(model, batch).float().item()
    model.train()
    return value


def _silence(*loggers: str) -> None:
    """Lightning sets its loggers to INFO when imported: banners and tips, not the benchmark's output."""
    import logging

    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)


# -- Lightning ------------------------------------------------------------------------------------------------


class _Stream(torch.utils.data.IterableDataset):
    """Pre-made batches as a dataset (loaders take it with ``batch_size=None``, or unwrap a list of one)."""

    def __init__(self, batches: Iterator[Batch]):
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return self.batches


def _lightning_module(job: Job) -> Any:
    import lightning as L

    class JobModule(L.LightningModule):
        """The job's model, loss and optimizers as a LightningModule (``self.net`` is the model)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = job.model
            self.automatic_optimization = not job.manual_two

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            loss = job.loss(self.net, batch)
            if self.automatic_optimization:
                return loss
            opts = self.optimizers()
            for opt in opts:
                opt.zero_grad()
            self.manual_backward(loss)
            if job.clip is not None:
                for opt in opts:
                    self.clip_gradients(opt, gradient_clip_val=job.clip, gradient_clip_algorithm="norm")
            for opt in opts:
                opt.step()
            for sched in job.schedulers:
                sched.step()
            return loss.detach()

        def validation_step(self, batch: Batch, batch_idx: int) -> None:
            self.log("val_loss", job.loss(self.net, batch))

        def configure_optimizers(self) -> Any:
            if job.manual_two or not job.schedulers:
                return list(job.optimizers)
            return list(job.optimizers), [{"scheduler": s, "interval": "step"} for s in job.schedulers]

    return JobModule()


def run_lightning(job: Job, watch_kwargs: dict[str, Any]) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from txwatch.integrations.lightning import TxwatchCallback

    _silence("lightning.pytorch", "lightning.fabric")
    precision = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[job.precision]
    val = job.val_every and job.val_batch is not None
    trainer = L.Trainer(
        max_steps=job.steps, accelerator="cpu", devices=1, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accumulate_grad_batches=1 if job.manual_two else job.accumulate,
        gradient_clip_val=None if job.manual_two else job.clip,
        val_check_interval=job.val_every * job.accumulate if val else None,
        check_val_every_n_epoch=None, limit_val_batches=1 if val else 0, num_sanity_val_steps=0,
        callbacks=[TxwatchCallback(**watch_kwargs)],
    )
    train = DataLoader(_Stream(job.batches), batch_size=None)
    vals = DataLoader([job.val_batch], batch_size=None) if val else None
    trainer.fit(_lightning_module(job), train, vals)


# -- Hugging Face Trainer -------------------------------------------------------------------------------------


class WithLoss(nn.Module):
    """A plain model that computes its own loss, as the transformers Trainer wants (``model`` inside)."""

    def __init__(self, model: nn.Module, loss: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss

    def forward(self, inputs: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = {"inputs": inputs, "input_ids": input_ids, "labels": labels}
        return {"loss": self.loss_fn(self.model, {k: v for k, v in batch.items() if v is not None})}


def _first(items: list[Batch]) -> Batch:
    return items[0]


def run_hf(job: Job, watch_kwargs: dict[str, Any]) -> None:
    from transformers import PreTrainedModel, PrinterCallback, Trainer, TrainingArguments

    from txwatch.integrations.huggingface import TxwatchCallback

    model = job.model if isinstance(job.model, PreTrainedModel) else WithLoss(job.model, job.loss)
    val = bool(job.val_every and job.val_batch is not None)
    schedule = job.schedulers[0] if job.schedulers else torch.optim.lr_scheduler.LambdaLR(
        job.optimizers[0], lambda _: 1.0)  # without one the Trainer would add a linear decay
    with tempfile.TemporaryDirectory(prefix="txwatch-bench-hf-") as out:
        args = TrainingArguments(
            output_dir=out, max_steps=job.steps, per_device_train_batch_size=1,
            gradient_accumulation_steps=job.accumulate, max_grad_norm=job.clip or 0.0,
            eval_strategy="steps" if val else "no", eval_steps=job.val_every if val else None,
            logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True, bf16=job.precision == "bf16",
            remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
            disable_tqdm=True, seed=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_Stream(job.batches),
                          eval_dataset=[job.val_batch] if val else None, data_collator=_first,
                          optimizers=(job.optimizers[0], schedule), callbacks=[TxwatchCallback(**watch_kwargs)])
        trainer.remove_callback(PrinterCallback)  # it prints each evaluation's metrics
        trainer.train()
