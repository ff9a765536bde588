"""fp16 loss scaling (torch.amp.GradScaler) in a plain loop: each reported figure against the scaler's own view.

The loop is the standard AMP recipe with real fp16 autocast on the CPU. Its reference figures are taken after
``scaler.unscale_()`` (the unscaled gradients the optimizer uses); whether the scaler skipped an iteration is read
from the scale, which ``update()`` lowers exactly when it skips. One iteration's loss is multiplied by 1e34 (still
a finite loss) so that its scaled gradients overflow, which is how an overflow looks to the scaler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

import txwatch_hooks
from tests.hooks.conftest import FAST, batch_of, points
from txwatch_hooks.integrations._common import check_kwargs

OVERFLOW_AT = 4  # the iteration whose scaled gradients overflow
ITERATIONS = 8


@dataclass
class Iteration:
    step: int  # monitor.step after it: a skipped plain-optimizer step is not an optimizer step
    scale: float  # the scale its gradients carry
    skipped: bool
    norms: dict[str, float] = field(default_factory=dict)  # unscaled, per parameter
    total: float = 0.0  # unscaled
    scaled_total: float = 0.0  # what backward left in .grad


def _train(model, opt, scaler, monitor) -> list[Iteration]:
    done = []
    for i in range(1, ITERATIONS + 1):
        x, y = batch_of(seed=i)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x), y)
        if i == OVERFLOW_AT:
            loss = loss * 1e34
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaled_total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        scaler.unscale_(opt)
        norms = {n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()}
        total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        done.append(Iteration(monitor.step, scale, scaler.get_scale() < scale, norms, total, scaled_total))
    assert done[OVERFLOW_AT - 1].skipped
    return done


def _skips_until(done: list[Iteration], it: Iteration) -> int:
    return sum(d.skipped for d in done[:done.index(it) + 1])


@pytest.mark.parametrize("every", [1, 3], ids=["overflow-at-a-sampled-step", "overflow-between-samples"])
@pytest.mark.parametrize("fused", [False, True], ids=["plain-optimizer", "fused-optimizer"])
def test_norms_are_unscaled_and_a_skipped_step_is_counted_not_reported_as_nonfinite(tiny, sink, fused, every):
    """A plain optimizer is not stepped when the scaler skips; a fused one is (it skips inside): both are
    reported as skips, and no overflowed gradient reaches the norms or the non-finite count."""
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3, fused=fused)
    scaler = torch.amp.GradScaler("cpu")
    with txwatch_hooks.watch(tiny, opt, sender=sink, scaler=scaler, grad_every=every, update_every=every,
                             every_step_cost=1, **FAST) as mon:
        done = _train(tiny, opt, scaler, mon)
    skipped = [d for d in done if d.skipped]
    reported = [d for d in done if not d.skipped and (d.step == 1 or d.step % every == 0)]
    assert sorted(points(sink, "grad_norm_total")) == [d.step for d in reported]
    for d in reported:
        assert d.scale >= 1024  # so a scaled norm would be off by three orders of magnitude or more
        for name, norm in d.norms.items():
            assert points(sink, f"grad_norm/{name}")[d.step] == pytest.approx(norm, rel=1e-5)
        assert points(sink, "grad_norm_total")[d.step] == pytest.approx(d.total, rel=1e-5)
        assert points(sink, "loss_scale")[d.step] == d.scale
        assert points(sink, "scaler_skipped")[d.step] == _skips_until(done, d)
    assert set(points(sink, "grad_nonfinite").values()) == {0.0}
    assert all(math.isfinite(v) for n in sink.names() if n.startswith("grad_norm") for _, v in sink.series(n))
    # update ratios are dense over the first steps; a skip updates nothing
    assert sorted(points(sink, "update_ratio_max")) == [d.step for d in done if not d.skipped]
    # every step's norms between the samples were unscaled too, and the overflow is not taken for a NaN
    assert set(points(sink, "grad_nonfinite_steps").values()) == {0.0}
    for d in reported[1:]:
        between = [e.total for e in done if not e.skipped and reported[reported.index(d) - 1].step < e.step <= d.step]
        assert points(sink, "grad_norm_total_max")[d.step] == pytest.approx(max(between), rel=1e-5)
    assert max(points(sink, "scaler_skipped").values()) == len(skipped) == 1
    if fused:  # the skipped step is a step of its own: when sampled, the scaler's figures and nothing else
        assert mon.step == ITERATIONS
        for d in skipped:
            if every == 1:
                assert points(sink, "scaler_skipped")[d.step] == _skips_until(done, d)
                assert points(sink, "loss_scale")[d.step] == d.scale
            else:
                assert d.step not in points(sink, "scaler_skipped")
    else:
        assert mon.step == ITERATIONS - len(skipped)


def test_without_a_scaler_the_norms_are_those_of_the_scaled_gradients(tiny, sink):
    """Unchanged when the monitor is not told: scaled norms, and a fused skip looks like a blow-up."""
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=1, update_every=0, **FAST) as mon:
        done = _train(tiny, opt, scaler, mon)
    total = points(sink, "grad_norm_total")
    for d in done:
        if d.skipped:
            assert not math.isfinite(total[d.step]) and points(sink, "grad_nonfinite")[d.step] > 0
        else:
            assert total[d.step] == pytest.approx(d.scaled_total, rel=1e-5)
            assert total[d.step] == pytest.approx(d.total * d.scale, rel=1e-5)
    assert not {"loss_scale", "scaler_skipped"} & sink.names()


def test_gradient_accumulation_under_a_scaler(tiny, sink):
    """Micro-batch backwards of one step carry the same scale: the accumulated gradient, unscaled."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    expected = {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, scaler=scaler, grad_every=1, update_every=0, **FAST):
        for step in range(1, 4):
            for micro in range(3):
                x, y = batch_of(seed=10 * step + micro)
                scaler.scale(torch.nn.functional.mse_loss(tiny(x), y) / 3).backward()
            scaler.unscale_(opt)
            expected[step] = torch.nn.utils.get_total_norm([p.grad for p in tiny.parameters()]).item()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert points(sink, "grad_norm_total") == pytest.approx(expected, rel=1e-5)
    assert points(sink, "loss_scale") == {1: 1024.0, 2: 1024.0, 3: 1024.0}
    assert points(sink, "scaler_skipped") == {1: 0.0, 2: 0.0, 3: 0.0}


def test_a_disabled_scaler_is_no_scaler(tiny, sink):
    """``GradScaler(enabled=use_amp)`` with use_amp False: nothing is scaled, nothing to report."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with txwatch_hooks.watch(tiny, opt, sender=sink, scaler=scaler, grad_every=1, update_every=0, **FAST):
        x, y = batch_of()
        scaler.scale(torch.nn.functional.mse_loss(tiny(x), y)).backward()
        expected = torch.nn.utils.get_total_norm([p.grad for p in tiny.parameters()]).item()
        scaler.step(opt)
        scaler.update()
    assert points(sink, "grad_norm_total") == pytest.approx({1: expected}, rel=1e-5)
    assert not {"loss_scale", "scaler_skipped"} & sink.names()


@pytest.mark.parametrize("bad", ["fp16", 65536.0, torch.optim.SGD])
def test_a_scaler_that_is_not_one_is_refused_at_once(tiny, bad):
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        txwatch_hooks.watch(tiny, scaler=bad, **FAST)
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        check_kwargs({"run": "r", "scaler": bad})  # what the framework callbacks run when they are made


def test_iterations_skipped_after_the_last_step_are_reported_when_the_run_ends(tiny, sink):
    """Every iteration overflows from the 4th on: a plain optimizer is never stepped again, so no step reports
    the skips. Closing the run reports them at the last step (the store keeps the later value of a step), or a
    scale collapsing toward 0 would end the run unseen."""
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    iterations, good = 24, 3
    with txwatch_hooks.watch(tiny, opt, sender=sink, scaler=scaler, **FAST) as mon:
        for i in range(1, iterations + 1):
            x, y = batch_of(seed=i)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(tiny(x), y)
            if i > good:
                loss = loss * math.inf
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        assert mon.step == good
    final_scale = scaler.get_scale()
    assert final_scale == 65536.0 * 0.5 ** (iterations - good) < 1
    scale, skipped = sink.series("loss_scale"), sink.series("scaler_skipped")
    assert scale[-1] == (good, final_scale)
    assert skipped[-1] == (good, float(iterations - good))
    assert all(v >= 1024 for _, v in scale[:-1])  # what the steps themselves reported


def test_nothing_more_is_reported_at_the_end_when_the_last_iteration_stepped(tiny, sink):
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with txwatch_hooks.watch(tiny, opt, sender=sink, scaler=scaler, **FAST):
        for i in range(1, 6):
            x, y = batch_of(seed=i)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(tiny(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    # the sampled steps carry the scaler's figures, each once: the end adds nothing
    assert len(points(sink, "loss_scale")) == len(points(sink, "scaler_skipped")) >= 2
