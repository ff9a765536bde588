"""The Lightning callback with a real lightning.Trainer on a tiny model (CPU, a few steps)."""

from __future__ import annotations

import math

import pytest
import torch

lightning = pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402

from txwatch_hooks.integrations.lightning import TxwatchCallback  # noqa: E402
from txwatch_hooks.testing import MemorySender  # noqa: E402

pytestmark = pytest.mark.slow


class Regressor(pl.LightningModule):
    def __init__(self, lr: float = 0.05, fail_at: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.grad_norms: dict[int, float] = {}
        self.losses: dict[int, list[float]] = {}

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at is not None and self.global_step >= self.hparams.fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.setdefault(self.global_step + 1, []).append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))
        self.log("val/mae", (self.net(x) - y).abs().mean())

    def on_before_optimizer_step(self, optimizer):
        # independent record: the gradient norm before Lightning clips it (clipping runs after this hook)
        self.grad_norms[self.global_step + 1] = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in self.parameters()])).item()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(dim=1, keepdim=True) * 3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _trainer(callback, **kwargs):
    return pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                      gradient_clip_val=0.01, num_sanity_val_steps=1, **kwargs)


def test_lightning_fit_is_watched_end_to_end():
    sink = MemorySender()
    callback = TxwatchCallback(run="lightning-e2e", project="frameworks", sender=sink, grad_every=1,
                               update_every=2, schedule_delay_s=0.02, system_interval_s=0, crash_hooks=False)
    model = Regressor()
    _trainer(callback, accumulate_grad_batches=2).fit(model, _loader(), _loader(16, seed=1))
    assert callback.monitor.closed
    steps = 2 * 3  # 6 batches per epoch, 2 micro-batches per step, 2 epochs
    loss = dict(sink.series("loss"))
    assert sorted(loss) == list(range(1, steps + 1))
    for step, values in model.losses.items():  # mean of the step's micro-batch losses
        assert loss[step] == pytest.approx(sum(values) / len(values), rel=1e-5)
    total = dict(sink.series("grad_norm_total"))
    assert total == pytest.approx(model.grad_norms, rel=1e-5)  # before Lightning's clipping
    assert sorted(dict(sink.series("update_ratio_max"))) == [1, 2, 3, 4, 5, 6]  # dense over the first 20 steps
    val = dict(sink.series("val_loss"))
    assert sorted(val) == [3, 6]  # end of each epoch (the sanity check is not reported)
    assert sorted(dict(sink.series("val_mae"))) == [3, 6]
    assert sorted(dict(sink.series("lr/0"))) == list(range(1, steps + 1))
    first = sink.batches[0]
    assert first["run"] == "lightning-e2e" and first["run_info"]["config"]["lr"] == 0.05
    (end,) = sink.events("end")
    assert end["status"] == "finished" and end["step"] == steps


class Overflowing(Regressor):
    """Returns, at one step, a loss that is finite but whose scaled gradients overflow in fp16."""

    overflow_step = 4

    def __init__(self):
        super().__init__()
        self.scales: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1e34 if self.global_step + 1 == self.overflow_step else loss

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)  # after Lightning's unscale_: the unscaled norm, or inf/NaN
        self.scales[self.global_step + 1] = self.trainer.precision_plugin.scaler.get_scale()


def test_fp16_mixed_precision_reports_unscaled_norms_and_counts_skipped_steps():
    """'16-mixed' with real fp16 autocast on the CPU: the precision plugin's GradScaler is found without being
    passed. Its skipped steps (fp16's own first ones, and the forced one at a sampled step whose gradients are
    still pending when Lightning moves the step on) are counted, and none of their gradients is reported."""
    sink = MemorySender()
    callback = TxwatchCallback(run="lightning-fp16", sender=sink, grad_every=2, update_every=0,
                               schedule_delay_s=0.02, system_interval_s=0, crash_hooks=False)
    model = Overflowing()
    _trainer(callback, plugins=[MixedPrecision("16-mixed", "cpu")]).fit(model, _loader(), _loader(16, seed=1))
    skipped = {s for s, norm in model.grad_norms.items() if not math.isfinite(norm)}
    assert Overflowing.overflow_step in skipped and Overflowing.overflow_step + 1 not in skipped
    sampled = {s for s in model.grad_norms if s == 1 or s % 2 == 0}
    total = dict(sink.series("grad_norm_total"))
    assert sorted(total) == sorted(sampled - skipped)
    assert total == pytest.approx({s: model.grad_norms[s] for s in total}, rel=1e-5)
    assert set(dict(sink.series("grad_nonfinite")).values()) == {0.0}
    assert dict(sink.series("loss_scale")) == {s: model.scales[s] for s in total}
    assert dict(sink.series("scaler_skipped")) == {s: len([k for k in skipped if k < s]) for s in total}


def test_lightning_crash_is_reported_as_oom():
    sink = MemorySender()
    callback = TxwatchCallback(sender=sink, schedule_delay_s=0.02, system_interval_s=0, crash_hooks=False)
    with pytest.raises(torch.OutOfMemoryError):
        _trainer(callback).fit(Regressor(fail_at=2), _loader())
    (end,) = sink.events("end")
    assert end["status"] == "oom" and end["step"] == 2
    assert end["error"]["type"] == "torch.OutOfMemoryError"


def test_bad_option_fails_when_the_callback_is_made():
    with pytest.raises(TypeError, match="grad_evry"):
        TxwatchCallback(grad_evry=3)


def test_the_standalone_pytorch_lightning_package_works_too():
    pl_classic = pytest.importorskip("pytorch_lightning")

    class Tiny(pl_classic.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    sink = MemorySender()
    callback = TxwatchCallback(sender=sink, schedule_delay_s=0.02, system_interval_s=0, crash_hooks=False)
    pl_classic.Trainer(max_steps=3, callbacks=[callback], logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(Tiny(), _loader())
    assert sorted(dict(sink.series("loss"))) == [1, 2, 3]
    assert [e["status"] for e in sink.events("end")] == ["finished"]


class LoggingRegressor(Regressor):
    """Logs its own training metrics: every batch, on_step and on_epoch, epoch-only, every third batch, and
    its loss under the name the hooks send themselves. Keeps each micro-batch's values, keyed by step."""

    def __init__(self):
        super().__init__()
        self.logged: dict[str, dict[int, list[float]]] = {}

    def _log(self, name, value, **kwargs):
        self.log(name, value, **kwargs)
        self.logged.setdefault(name, {}).setdefault(self.global_step + 1, []).append(value.item())

    def training_step(self, batch, batch_idx):
        x, y = batch
        prediction = self.net(x)
        loss = torch.nn.functional.mse_loss(prediction, y)
        self._log("train/mae", (prediction - y).abs().mean())
        self._log("acc", (prediction - y).abs().lt(1).float().mean(), on_step=True, on_epoch=True)
        self._log("epoch_only", loss * 2, on_step=False, on_epoch=True)
        if batch_idx % 3 == 0:
            self._log("rare", loss * 3)
        self._log("loss", loss * 0 + 1234.0)  # not the loss: the returned one is
        self.losses.setdefault(self.global_step + 1, []).append(loss.item())
        return loss


def _means(per_step):
    return {s: sum(v) / len(v) for s, v in per_step.items()}


def test_metrics_logged_in_training_step_are_series_averaged_over_the_step():
    sink = MemorySender()
    callback = TxwatchCallback(run="lightning-logged", sender=sink, schedule_delay_s=0.02, system_interval_s=0,
                               crash_hooks=False)
    model = LoggingRegressor()
    _trainer(callback, accumulate_grad_batches=2).fit(model, _loader(), _loader(16, seed=1))
    steps = list(range(1, 7))
    assert points_of(sink, "train_mae") == pytest.approx(_means(model.logged["train/mae"]), rel=1e-5)
    assert sorted(points_of(sink, "train_mae")) == steps
    # on_step and on_epoch: the step values, named as Lightning's loggers name them; no epoch aggregates
    assert points_of(sink, "acc_step") == pytest.approx(_means(model.logged["acc"]), rel=1e-5)
    assert not {"acc", "acc_epoch", "epoch_only", "epoch_only_epoch"} & sink.names()
    # a metric logged every third batch only at the steps it was logged in, not repeated in between
    assert points_of(sink, "rare") == pytest.approx(_means(model.logged["rare"]), rel=1e-5)
    assert sorted(points_of(sink, "rare")) == [1, 2, 4, 5]  # batches 0 and 3 of each epoch
    # the returned loss stays the loss series, validation stays at the validation steps
    assert points_of(sink, "loss") == pytest.approx(_means(model.losses), rel=1e-5)
    assert sorted(points_of(sink, "val_loss")) == [3, 6]
    info = sink.batches[0]["run_info"]  # the optimizer Lightning made: in the first run_info's roles
    assert [(g["optimizer_class"], g["lr"]) for g in info["param_groups"]] == [("SGD", 0.05)]
    assert [(p["name"], p["kind"], p["group"]) for p in info["params"]] == [
        ("net.0.weight", "weight", 0), ("net.0.bias", "bias", 0), ("net.2.weight", "weight", 0),
        ("net.2.bias", "bias", 0)]


def points_of(sink, name):
    """step -> value of one series, each step sent once."""
    pts = sink.series(name)
    assert len({s for s, _ in pts}) == len(pts), f"{name}: a step was sent twice"
    return dict(pts)
