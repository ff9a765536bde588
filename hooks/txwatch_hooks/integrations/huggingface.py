"""Hugging Face ``transformers`` callback: ``Trainer(..., callbacks=[TxwatchCallback(run="...")])``.

Watches the model and the Trainer's optimizer like ``watch()`` does, and adds what the Trainer knows: the
per-step training loss (read from the model's output in training mode and combined over gradient-accumulation
micro-batches the way the Trainer combines them, without a host sync; falls back to the Trainer's logged
``loss`` when the model returns none), the rest of what the Trainer logs (``grad_norm``, ``learning_rate``, a
subclass's own ``self.log`` figures, the end-of-training summary) as series of the same names at the step they
are logged, the evaluation metrics (``eval_loss`` -> ``val_loss``, ``eval_X`` -> ``val_X``), ``global_step`` as
the step, and the TrainingArguments as the run's config.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from txwatch_hooks.integrations._common import check_kwargs, metric_name, training_metrics
from txwatch_hooks.monitor import Monitor, watch

__all__ = ["TxwatchCallback"]

_EVAL_SKIP = {"epoch"}
# in every log: the fractional epoch, a function of the step; the per-step loss is captured from the model
_LOG_SKIP = {"epoch", "loss"}


class TxwatchCallback(TrainerCallback):
    """Takes the same keyword arguments as ``txwatch_hooks.watch()``. ``monitor`` is the live Monitor."""

    def __init__(self, **watch_kwargs: Any):
        self.watch_kwargs = check_kwargs(watch_kwargs)
        self.monitor: Monitor | None = None
        self._losses: list[torch.Tensor] = []
        self._losses_are_parts = False  # micro-batch losses already divided by the whole step's item count
        self._model_gives_loss = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            return
        options = dict(self.watch_kwargs)
        if options.get("config") is None:
            options["config"] = _args_config(args)
        if self.monitor is not None:  # a later training with this callback continues its run
            options.update(run=self.monitor.run, resume="allow")
        if options.get("preflight"):  # on the first batch's forward (labels in, .loss out): add the schedule
            extra = {"scheduler": kwargs.get("lr_scheduler"), "max_steps": state.max_steps or None}
            options["preflight"] = {**extra, **(options["preflight"] if isinstance(options["preflight"], dict) else {})}
        self.monitor = watch(model, optimizer, **options)
        self.monitor._set_step(state.global_step)
        if model is not None:  # not a hook on the model: it must stay picklable (txwatch_hooks.forwards)
            self.monitor._listen_forward(self._on_forward)

    def _on_forward(self, module: Any, inputs: Any, kwargs: dict, output: Any) -> None:
        try:
            if not module.training:
                return
            # With num_items_in_batch the Trainer has the model divide by the step's total item count, so
            # the step's loss is the sum of its micro-batch losses; otherwise it is their mean.
            self._losses_are_parts = kwargs.get("num_items_in_batch") is not None
            loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
            if loss is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
                loss = output[0] if output[0].numel() == 1 else None
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                self._losses.append(loss.detach())
                self._model_gives_loss = True
        except Exception as exc:
            if self.monitor is not None:
                self.monitor._guard.fail("transformers loss capture", exc)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        monitor = self.monitor
        if monitor is None:
            return
        monitor._set_step(state.global_step)  # a skipped step (fp16 overflow) still counts for the Trainer
        if not self._losses:
            return
        losses, self._losses = self._losses, []
        try:
            if len(losses) == 1:
                value = losses[0]
            else:  # on the device: no sync; reshaped, as micro-batches may hand back () and (1,) losses
                stacked = torch.stack([loss.reshape(()) for loss in losses]).float()
                value = stacked.sum() if self._losses_are_parts else stacked.mean()
        except Exception as exc:  # losses on different devices (a model split across GPUs): never into the loop
            monitor._guard.fail("transformers loss capture", exc, disable=False)
            return
        monitor.log(step=state.global_step, loss=value)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        monitor = self.monitor
        if monitor is None or not logs:
            return
        try:
            numbers = ((k, v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            values = training_metrics(numbers, skip=_LOG_SKIP)  # evaluation logs: on_evaluate has them
            if not self._model_gives_loss and isinstance(logs.get("loss"), (int, float)):
                values["loss"] = float(logs["loss"])  # the model returned none: the Trainer's logged mean
            if values:
                monitor.log(step=state.global_step, **values)
        except Exception as exc:
            monitor._guard.fail("transformers log capture", exc, disable=False)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        if self.monitor is None or not metrics:
            return
        values = {}
        for key, value in metrics.items():
            if key in _EVAL_SKIP or not isinstance(value, (int, float)):
                continue
            key = "val_" + key[len("eval_"):] if key.startswith("eval_") and key != "eval_loss" else key
            name = metric_name(key)
            if name is not None:
                values[name] = value
        if values:
            self.monitor.log(step=state.global_step, **values)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor._set_step(state.global_step)
            self.monitor.close()


def _args_config(args: Any) -> dict[str, Any]:
    try:
        return args.to_sanitized_dict()
    except Exception:
        return {}
