"""Real trainings that go wrong in one known way (and healthy ones), each with the step the fault starts.

Used by the end-to-end rule tests: the rule for the fault must fire within a stated number of steps of
``onset``, and healthy runs must fire nothing of severity warning or critical.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from txwatch_hooks.crash import is_oom

from tests.rules.training import (
    Recorded,
    TinyGPT,
    ce_loss,
    classification,
    lm_loss,
    mlp,
    token_batches,
    train,
    warmup_cosine,
)


@dataclass
class Scenario:
    recorded: Recorded
    onset: int  # the step the fault starts (1 when it is there from the start)
    nan_step: int | None = None  # first step with a non-finite loss, if any


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)


def healthy_gpt(steps: int = 300, watch: dict | None = None) -> Scenario:
    """A GPT-style decoder, AdamW with warmup and cosine decay, gradient clipping: sane settings."""
    _seed()
    model = TinyGPT(vocab=48, dim=32, heads=4, layers=2, ctx=16)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = warmup_cosine(opt, warmup=30, total=steps)
    val = token_batches(vocab=48, ctx=16, batch_size=64, seed=1)
    val_batch = next(val)

    def val_loss(m: nn.Module) -> float:
        return lm_loss(m, val_batch).item()

    rec = train(
        model, opt, token_batches(vocab=48, ctx=16, batch_size=16), steps, lm_loss,
        scheduler=sched, clip=1.0, val_fn=val_loss, val_every=25, sample_every=5, ratio_every=5, watch=watch,
    )
    return Scenario(rec, onset=0)


def healthy_mlp(steps: int = 400, watch: dict | None = None) -> Scenario:
    """An MLP classifier with a validation set, Adam at 1e-3."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = train(model, opt, data.batches(64), steps, ce_loss, val_fn=data.val_loss, val_every=25, watch=watch)
    return Scenario(rec, onset=0)


def lr_too_high(steps: int = 300, onset: int = 100, watch: dict | None = None) -> Scenario:
    """Regression MLP trained well with SGD, then the learning rate jumps 30x (a schedule bug) at ``onset``."""
    _seed()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=g)
    y = (x @ torch.randn(16, 1, generator=g)) + 0.1 * torch.randn(1024, 1, generator=g)
    model = mlp([16, 32, 32, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def batches() -> Iterator:
        i = 0
        while True:
            idx = torch.randint(0, 1024, (64,), generator=g)
            i += 1
            if i == onset:
                for group in opt.param_groups:
                    group["lr"] = 0.3
            yield x[idx], y[idx]

    def mse(m: nn.Module, batch) -> torch.Tensor:
        xb, yb = batch
        return nn.functional.mse_loss(m(xb), yb)

    rec = train(model, opt, batches(), steps, mse, watch=watch)
    return Scenario(rec, onset=onset, nan_step=rec.first_nonfinite_step())


def gpt_lr_too_high(steps: int = 60, watch: dict | None = None) -> Scenario:
    """The GPT of ``healthy_gpt`` with AdamW at 0.5 from the first step, no warmup and no clipping: the loss
    leaves its start at once and climbs several-fold within a few steps (there is no best to come back from)."""
    _seed()
    model = TinyGPT(vocab=48, dim=32, heads=4, layers=2, ctx=16)
    opt = torch.optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.01)
    rec = train(model, opt, token_batches(vocab=48, ctx=16, batch_size=16), steps, lm_loss, watch=watch)
    return Scenario(rec, onset=1)


def lr_too_low(steps: int = 400, watch: dict | None = None) -> Scenario:
    """The MLP classifier with Adam at 1e-6: nothing moves."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    rec = train(model, opt, data.batches(64), steps, ce_loss, val_fn=data.val_loss, val_every=50, watch=watch)
    return Scenario(rec, onset=1)


def sgd_lr_too_low(steps: int = 300, watch: dict | None = None) -> Scenario:
    """Plain SGD at 1e-5: the weights barely change each step."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    rec = train(model, opt, data.batches(64), steps, ce_loss, watch=watch)
    return Scenario(rec, onset=1)


def tiny_training_set(steps: int = 800, watch: dict | None = None) -> Scenario:
    """A wide MLP on 48 training examples, validated on 512: it memorizes."""
    _seed()
    data = classification(n_train=48, n_val=512, noise=0.2)
    model = mlp([20, 256, 256, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = train(model, opt, data.batches(16), steps, ce_loss, val_fn=data.val_loss, val_every=20, watch=watch)
    return Scenario(rec, onset=1)


def zeroed_layer(steps: int = 200, onset: int = 60, watch: dict | None = None) -> Scenario:
    """The first layer's weights and bias are zeroed at ``onset`` (a bad checkpoint load): its ReLUs output
    zero, so it and the next layer's weights get exactly zero gradient from then on (plain SGD keeps them so)."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    inner = data.batches(64)

    def batches() -> Iterator:
        i = 0
        while True:
            i += 1
            if i == onset:
                with torch.no_grad():
                    model[0].weight.zero_()
                    model[0].bias.zero_()
            yield next(inner)

    rec = train(model, opt, batches(), steps, ce_loss, watch=watch)
    return Scenario(rec, onset=onset)


def slow_loader(steps: int = 200, delay_s: float = 0.015, watch: dict | None = None) -> Scenario:
    """The MLP fed by an input pipeline that takes 15 ms per batch: the CPU waits most of each step."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = train(model, opt, data.batches(64, delay_s=delay_s), steps, ce_loss, watch=watch)
    return Scenario(rec, onset=1)


def vanishing(steps: int = 150, watch: dict | None = None) -> Scenario:
    """A 12-layer sigmoid MLP without normalization: the early layers get almost no gradient."""
    _seed()
    data = classification()
    model = mlp([20] + [64] * 11 + [4], act=nn.Sigmoid)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = train(model, opt, data.batches(64), steps, ce_loss, sample_every=2, ratio_every=2, watch=watch)
    return Scenario(rec, onset=1)


def lr_too_high_sgd(steps: int = 300, lr: float = 0.5, watch: dict | None = None) -> Scenario:
    """The MLP classifier with SGD+momentum at 0.5 (about 10x too high): each step rewrites the weights, and
    the loss climbs back up later."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rec = train(model, opt, data.batches(64), steps, ce_loss, watch=watch)
    return Scenario(rec, onset=1)


def no_warmup(steps: int = 60, warmup: int = 0, lr: float = 0.1, watch: dict | None = None) -> Scenario:
    """A wider MLP classifier with Adam at 0.1 from the first step (or ramped up over ``warmup`` steps)."""
    _seed()
    data = classification(dim=32)
    model = mlp([32, 128, 128, 4])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = warmup_cosine(opt, warmup, 2000) if warmup else None
    rec = train(model, opt, data.batches(64), steps, ce_loss, scheduler=sched, watch=watch)
    return Scenario(rec, onset=1)


def restarts_too_high(steps: int = 450, period: int = 150, watch: dict | None = None) -> Scenario:
    """SGD with warm restarts to a learning rate far too high: each restart throws the loss back up."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=period, eta_min=1e-3)
    rec = train(model, opt, data.batches(64), steps, ce_loss, scheduler=sched, watch=watch)
    return Scenario(rec, onset=period)


def _fp16_scaler() -> torch.amp.GradScaler:
    # starts at 2^24 (as high-starting configs do) so that it really calibrates down, and tries a larger scale
    # after 50 clean steps instead of 2000: a long run's occasional skips, within a few hundred steps
    return torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=50)


def healthy_fp16(steps: int = 400, watch: dict | None = None) -> Scenario:
    """The MLP classifier trained in fp16 (autocast on the CPU with a GradScaler), Adam at 1e-3: the scaler
    skips a few steps while it calibrates, then one now and then when it tries a larger scale."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = train(model, opt, data.batches(64), steps, ce_loss, val_fn=data.val_loss, val_every=25, watch=watch,
                scaler=_fp16_scaler())
    return Scenario(rec, onset=0)


def fp16_overflow(steps: int = 300, onset: int = 150, factor: float = 1e9, fused: bool = False,
                  watch: dict | None = None) -> Scenario:
    """The fp16 MLP classifier where, from iteration ``onset`` on, the loss is ``factor`` times too large (a loss
    summed where it should be averaged, a loss weight off by orders of magnitude): its gradients overflow fp16
    even unscaled, so the GradScaler skips iterations until the scale has collapsed far below 1.

    The scenario's onset is the optimizer step the fault starts at, which is what the hooks count: a plain
    optimizer is not stepped on the iterations the scaler skips. ``fused=True`` uses a fused Adam, which is
    stepped on every iteration and skips inside, so each skipped iteration is a step."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    optimizer_steps = iteration = 0
    onset_step: int | None = None

    def count_step(*_) -> None:
        nonlocal optimizer_steps
        optimizer_steps += 1

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        nonlocal iteration, onset_step
        iteration += 1
        if iteration < onset:
            return ce_loss(m, batch)
        if onset_step is None:
            onset_step = optimizer_steps + 1
        return ce_loss(m, batch) * factor

    opt.register_step_post_hook(count_step)
    rec = train(model, opt, data.batches(64), steps, loss_fn, watch=watch, scaler=_fp16_scaler())
    return Scenario(rec, onset=onset_step)


def crashing(steps: int = 200, crash_at: int = 40, watch: dict | None = None) -> Scenario:
    """A training whose data pipeline yields a malformed batch at ``crash_at``: a real exception ends it."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _fault_at(data.batches(64), crash_at, lambda xb: xb[:, :19])  # a feature went missing upstream
    return _until_exception(model, opt, batches, steps, crash_at, watch)


def out_of_memory(steps: int = 100, oom_at: int = 30, watch: dict | None = None) -> Scenario:
    """A collate step that pads the batch at ``oom_at`` to an absurd size: the allocation fails for real
    (a ``MemoryError``, as a GPU run gets ``torch.OutOfMemoryError``)."""
    _seed()
    data = classification()
    model = mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def pad(xb):  # 2^36 padded rows: ~5 TB, no machine has it
        import numpy as np

        return torch.from_numpy(np.zeros((1 << 36, xb.shape[1]), dtype=np.float32))

    return _until_exception(model, opt, _fault_at(data.batches(64), oom_at, pad), steps, oom_at, watch)


def _fault_at(batches: Iterator, at: int, fault) -> Iterator:
    """``batches`` with the inputs of the ``at``-th (counting from 1) passed through ``fault``."""
    for i, (xb, yb) in enumerate(batches, start=1):
        yield (fault(xb) if i == at else xb), yb


def _until_exception(model, opt, batches, steps, at, watch: dict | None = None) -> Scenario:
    import psutil

    rec = Recorded()
    try:
        train(model, opt, batches, steps, ce_loss, rec=rec, watch=watch)
    except Exception as exc:  # what the hooks do: report how the run ended, with the memory figures
        if watch is not None:
            return Scenario(rec, onset=at)  # the hooks reported it themselves
        status = "oom" if is_oom(exc) else "crashed"
        name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
        rec.end = {
            "kind": "end",
            "time": time.time(),
            "step": at,
            "status": status,
            "error": {"type": name, "message": str(exc)[:500]},
            "memory": {"cpu": {"rss": float(psutil.Process().memory_info().rss)}},
        }
    return Scenario(rec, onset=at)


def loss_series_end(rec: Recorded) -> int:
    return max((p[0] for p in rec.series.get("loss", [])), default=0)


def finite(v: float) -> bool:
    return math.isfinite(v)
