"""PyTorch Lightning callback: ``Trainer(callbacks=[TxwatchCallback(run="...")])``.

Watches the LightningModule and its (first) optimizer like ``watch()`` does, and adds what Lightning knows:
the training loss returned by ``training_step`` (averaged over gradient-accumulation micro-batches), the
GradScaler of ``precision="16-mixed"`` (so gradient norms are unscaled and skipped steps counted), the
metrics logged during validation (``self.log("val_loss", ...)`` -> ``val_loss``), the trainer's
``global_step`` as the step, and how ``fit`` ended (``on_exception`` reports crashes and OOMs).
Works with ``lightning.pytorch`` and, when that is not installed, with ``pytorch_lightning``.
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback

import torch

from txwatch_hooks.integrations._common import check_kwargs, metric_name
from txwatch_hooks.monitor import Monitor, watch
from txwatch_hooks.scaler import scaler_in

__all__ = ["TxwatchCallback"]


class TxwatchCallback(Callback):
    """Takes the same keyword arguments as ``txwatch_hooks.watch()`` (run, project, config, endpoint, token,
    sampling options). ``config`` defaults to the module's ``hparams``. ``monitor`` is the live Monitor."""

    def __init__(self, **watch_kwargs: Any):
        super().__init__()
        self.watch_kwargs = check_kwargs(watch_kwargs)
        self.monitor: Monitor | None = None
        self._losses: list[torch.Tensor] = []
        self._loss_step = -1

    # -- lifecycle ----------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            return
        kwargs = dict(self.watch_kwargs)
        if kwargs.get("config") is None:
            kwargs["config"] = _hparams(pl_module)
        if kwargs.get("scaler") is None:  # '16-mixed' keeps its GradScaler on the precision plugin
            kwargs["scaler"] = scaler_in(getattr(trainer, "precision_plugin", None))
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        self.monitor = watch(pl_module, optimizers[0] if optimizers else None, **kwargs)
        self.monitor._set_step(trainer.global_step)
        self._losses, self._loss_step = [], trainer.global_step

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if self.monitor is not None and optimizers and self.monitor._capture.optimizer is None:
            self.monitor._attach_optimizer(optimizers[0])

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
            self.monitor._note_batch_start()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        monitor = self.monitor
        if monitor is None:
            return
        try:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                loss = loss.detach()
                accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
                if getattr(pl_module, "automatic_optimization", True) and accumulate > 1:
                    loss = loss * accumulate  # Lightning hands back loss / accumulate_grad_batches
                self._losses.append(loss)
            if trainer.global_step != self._loss_step:  # an optimizer step happened: its loss is complete
                self._flush_loss(trainer)
        except Exception as exc:
            monitor._guard.fail("Lightning loss capture", exc, disable=False)

    def _flush_loss(self, trainer: Any) -> None:
        if self.monitor is None or not self._losses:
            self._loss_step = trainer.global_step
            return
        losses, self._losses = self._losses, []
        value = losses[0] if len(losses) == 1 else torch.stack(losses).float().mean()  # on the device
        self.monitor.log(step=trainer.global_step, loss=value)
        self._loss_step = trainer.global_step

    # -- validation ---------------------------------------------------------------------------------------

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        monitor = self.monitor
        if monitor is None or getattr(trainer, "sanity_checking", False):
            return
        try:
            values = {}
            for key, value in dict(trainer.callback_metrics).items():
                if not str(key).startswith(("val", "valid", "eval")):
                    continue
                name = metric_name(str(key))
                if name is not None:
                    values[name] = value
            if values:
                monitor.log(step=trainer.global_step, **values)
        except Exception as exc:
            monitor._guard.fail("Lightning validation capture", exc, disable=False)


def _hparams(pl_module: Any) -> dict[str, Any]:
    try:
        return dict(pl_module.hparams)
    except Exception:
        return {}
