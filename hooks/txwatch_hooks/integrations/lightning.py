"""PyTorch Lightning callback: ``Trainer(callbacks=[TxwatchCallback(run="...")])``.

Watches the LightningModule and every optimizer it configures like ``watch()`` does, and adds what Lightning knows:
the training loss returned by ``training_step`` (averaged over gradient-accumulation micro-batches), the
training metrics logged in ``training_step`` (``self.log("train_acc", ...)`` -> ``train_acc``, named as Lightning's
loggers name them and averaged over the step's micro-batches like the loss), the GradScaler of ``precision="16-mixed"`` (so gradient norms are unscaled and skipped steps counted), the
metrics logged during validation (``self.log("val_loss", ...)`` -> ``val_loss``), the trainer's
``global_step`` as the step, and how ``fit`` ended (``on_exception`` reports crashes and OOMs).
Works with ``lightning.pytorch`` and, when that is not installed, with ``pytorch_lightning``.
"""

from __future__ import annotations

import warnings
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback

import torch

from txwatch_hooks.integrations._common import check_kwargs, is_validation, metric_name, training_metrics
from txwatch_hooks.monitor import Monitor, watch
from txwatch_hooks.scaler import scaler_in

__all__ = ["TxwatchCallback"]


class TxwatchCallback(Callback):
    """Takes the same keyword arguments as ``txwatch_hooks.watch()`` (run, project, config, endpoint, token,
    sampling options). ``config`` defaults to the module's ``hparams``. ``monitor`` is the live Monitor."""

    def __init__(self, **watch_kwargs: Any):
        super().__init__()
        self.watch_kwargs = check_kwargs(watch_kwargs)
        # run by this callback on the first batch (training_step gives the loss), not by watch()'s forward hook
        self._preflight_option = self.watch_kwargs.pop("preflight", False)
        self._preflight: dict[str, Any] | None = None
        self.monitor: Monitor | None = None
        self._pending: dict[str, list[torch.Tensor]] = {}  # the step's loss and logged metrics, per micro-batch
        self._loss_step = -1
        self._seen: dict[str, torch.Tensor] = {}  # the step metrics read at the previous batch

    # -- lifecycle ----------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            return
        kwargs = dict(self.watch_kwargs)
        if kwargs.get("config") is None:
            kwargs["config"] = _hparams(pl_module)
        if self.monitor is not None:  # a later training with this callback continues its run
            kwargs.update(run=self.monitor.run, resume="allow")
        if kwargs.get("scaler") is None:  # '16-mixed' keeps its GradScaler on the precision plugin
            kwargs["scaler"] = scaler_in(getattr(trainer, "precision_plugin", None))
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        self.monitor = watch(pl_module, optimizers or None, **kwargs)  # every optimizer: a GAN's two
        if self._preflight_option:
            self._preflight = self._preflight_option if isinstance(self._preflight_option, dict) else {}
        self.monitor._set_step(trainer.global_step)
        self._pending, self._loss_step = {}, trainer.global_step

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if self.monitor is not None:
            for optimizer in optimizers:  # attached once each (a second attach is a no-op)
                self.monitor._attach_optimizer(optimizer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush_loss(trainer)
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor._note_crash(exception)
            self.monitor.close()

    # -- training -----------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor is not None:
            if self._preflight is not None:
                self._run_preflight(trainer, pl_module, batch)
            self.monitor._note_batch_start()

    def _run_preflight(self, trainer: Any, pl_module: Any, batch: Any) -> None:
        """``preflight=True``: the checks on the first batch, before it trains, with ``training_step``'s loss."""
        arguments, self._preflight = self._preflight, None
        monitor = self.monitor
        try:
            from txwatch_hooks.sanity import preflight

            optimizers = list(getattr(trainer, "optimizers", None) or [])
            schedulers = [c.scheduler for c in getattr(trainer, "lr_scheduler_configs", None) or []]
            planned = getattr(trainer, "estimated_stepping_batches", None)
            defaults = {"loss_fn": _training_step_loss, "scheduler": schedulers[0] if schedulers else None,
                        "max_steps": int(planned) if isinstance(planned, (int, float)) and planned < 2**62 else None}
            if optimizers:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # self.log() in a copy outside the trainer's loop
                    preflight(pl_module, optimizers[0], batch, run=monitor, **{**defaults, **arguments})
        except Exception as exc:
            monitor._guard.fail("preflight", exc, disable=False)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        monitor = self.monitor
        if monitor is None:
            return
        try:
            step_metrics = self._fresh(_step_metrics(trainer))
            logged = training_metrics(step_metrics.items())
            loss = _returned_loss(trainer, pl_module, outputs)
            if loss is None:
                loss = step_metrics.get("loss")  # a training_step that logs its loss and returns none
            if loss is not None:
                logged["loss"] = loss
            for name, value in logged.items():
                self._pending.setdefault(name, []).append(value.detach())
            if trainer.global_step != self._loss_step:  # an optimizer step happened: its values are complete
                self._flush_loss(trainer)
        except Exception as exc:
            monitor._guard.fail("Lightning training capture", exc, disable=False)

    def _fresh(self, step_metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The values logged in this batch: Lightning keeps a metric's last value until it is logged again,
        so one logged every 10 batches would otherwise repeat on the 9 between. Each log stores a new copy,
        and each read hands out a new view of it: a value is new when its memory is (a host-side address)."""
        fresh = {k: v for k, v in step_metrics.items()
                 if k not in self._seen or self._seen[k].data_ptr() != v.data_ptr()}
        self._seen = step_metrics  # held, so the memory of a value seen cannot be reused by a new one
        return fresh

    def _flush_loss(self, trainer: Any) -> None:
        """Log the finished step's loss and metrics: each the mean of its micro-batches' values, on the device."""
        pending, self._pending = self._pending, {}
        self._loss_step = trainer.global_step
        if self.monitor is None or not pending:
            return
        try:
            values = {name: v[0] if len(v) == 1 else torch.stack([x.float() for x in v]).mean()
                      for name, v in pending.items()}
            self.monitor.log(step=trainer.global_step, **values)
        except Exception as exc:  # on_fit_end calls this too: nothing may reach the user's fit()
            self.monitor._guard.fail("Lightning training capture", exc, disable=False)

    # -- validation ---------------------------------------------------------------------------------------

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        monitor = self.monitor
        if monitor is None or getattr(trainer, "sanity_checking", False):
            return
        try:
            values = {}
            for key, value in dict(trainer.callback_metrics).items():
                if not is_validation(str(key)):
                    continue
                name = metric_name(str(key))
                if name is not None:
                    values[name] = value
            if values:
                monitor.log(step=trainer.global_step, **values)
        except Exception as exc:
            monitor._guard.fail("Lightning validation capture", exc, disable=False)


def _returned_loss(trainer: Any, pl_module: Any, outputs: Any) -> torch.Tensor | None:
    """The loss ``training_step`` returned for this micro-batch, undoing Lightning's division by the number
    of accumulated batches; None when it returned none."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return None
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
    if getattr(pl_module, "automatic_optimization", True) and accumulate > 1:
        return loss.detach() * accumulate  # Lightning hands back loss / accumulate_grad_batches
    return loss.detach()


def _step_metrics(trainer: Any) -> dict[str, torch.Tensor]:
    """What ``self.log`` recorded for the current training batch, under the names Lightning's loggers use
    (``acc_step`` for a metric also logged on_epoch). Read from the training results themselves: the public
    ``callback_metrics`` also keeps epoch aggregates and validation values, which would repeat every step."""
    results = getattr(trainer, "_results", None)
    if results is None or not hasattr(results, "metrics"):
        return {}
    chosen: dict[int, tuple[str, torch.Tensor]] = {}  # on_step + on_epoch: one value under two names
    for key, value in results.metrics(True)["callback"].items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            kept = chosen.get(value.data_ptr())
            if kept is None or len(key) > len(kept[0]):
                chosen[value.data_ptr()] = (key, value)
    return dict(chosen.values())


def _training_step_loss(module: Any, batch: Any) -> Any:
    """The loss ``training_step`` returns (a tensor, or a dict's ``loss``), for preflight."""
    out = module.training_step(batch, 0)
    return out.get("loss") if isinstance(out, dict) else out


def _hparams(pl_module: Any) -> dict[str, Any]:
    try:
        return dict(pl_module.hparams)
    except Exception:
        return {}
