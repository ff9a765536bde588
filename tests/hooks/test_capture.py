"""Each captured value against an independent computation on a small model."""

from __future__ import annotations

import gc
import math
import statistics
import time
import weakref

import pytest
import torch

import txwatch_hooks
from txwatch_hooks import grads as grads_module
from tests.hooks.conftest import FAST, batch_of, points


def _names(model):
    return {n: p for n, p in model.named_parameters()}


def test_grad_norms_are_the_pre_clip_norms(tiny, sink):
    """Per-parameter norms, total and count match torch's own computation before clip_grad_norm_ ran."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    expected, totals = {}, {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=1, update_every=0, **FAST):
        for step in range(1, 6):
            x, y = batch_of(seed=step)
            loss = torch.nn.functional.mse_loss(tiny(x), y * 100)  # large targets: clipping really bites
            loss.backward()
            expected[step] = {n: torch.linalg.vector_norm(p.grad).item() for n, p in _names(tiny).items()}
            totals[step] = torch.nn.utils.clip_grad_norm_(tiny.parameters(), max_norm=0.01).item()
            clipped = math.sqrt(sum(torch.linalg.vector_norm(p.grad).item() ** 2 for p in tiny.parameters()))
            assert clipped < totals[step] / 10  # the clip happened, so a post-clip capture would be caught
            opt.step()
            opt.zero_grad()
    for name in _names(tiny):
        got = points(sink, f"grad_norm/{name}")
        assert sorted(got) == [1, 2, 3, 4, 5]
        for step, value in got.items():
            assert value == pytest.approx(expected[step][name], rel=1e-5)
    total = points(sink, "grad_norm_total")
    for step, value in total.items():
        assert value == pytest.approx(totals[step], rel=1e-5)
        assert value == pytest.approx(math.sqrt(sum(v * v for v in expected[step].values())), rel=1e-5)
    assert set(points(sink, "grad_nonfinite").values()) == {0.0}


def test_gradient_accumulation_reports_the_accumulated_gradient(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.05)
    expected = {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=1, update_every=0, **FAST):
        for step in range(1, 4):
            for micro in range(3):
                x, y = batch_of(seed=10 * step + micro)
                (torch.nn.functional.mse_loss(tiny(x), y) / 3).backward()
            expected[step] = torch.linalg.vector_norm(tiny.head.weight.grad).item()
            opt.step()
            opt.zero_grad()
    got = points(sink, "grad_norm/head.weight")
    assert got == pytest.approx(expected, rel=1e-5)


def test_nonfinite_gradients_are_counted_and_sent_as_they_are(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    counts = {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=1, update_every=0, **FAST) as monitor:
        for step in range(1, 4):
            x, y = batch_of(seed=step)
            if step == 2:
                x[0, 0] = float("inf")  # poisons part of the gradients with Inf and NaN
            loss = torch.nn.functional.mse_loss(tiny(x), y)
            loss.backward()
            counts[step] = sum(int((~torch.isfinite(p.grad)).sum()) for p in tiny.parameters())
            opt.step()
            opt.zero_grad()
            monitor.log(loss=loss)
            with torch.no_grad():  # repair the model so step 3 is finite again
                for p in tiny.parameters():
                    p.nan_to_num_(0.0, 0.0, 0.0)
    assert counts[2] > 0 and counts[1] == counts[3] == 0
    assert points(sink, "grad_nonfinite") == {1: 0.0, 2: float(counts[2]), 3: 0.0}
    assert not math.isfinite(points(sink, "grad_norm_total")[2])
    assert math.isnan(points(sink, "loss")[2]) or math.isinf(points(sink, "loss")[2])


def test_update_ratio_matches_an_explicit_copy(tiny, sink):
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-2, weight_decay=0.1)
    ratios, norms = {}, {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=0, update_every=2, **FAST):
        for step in range(1, 6):
            x, y = batch_of(seed=step)
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            before = {n: p.detach().clone() for n, p in _names(tiny).items()}
            opt.step()
            opt.zero_grad()
            norms[step] = {n: torch.linalg.vector_norm(b).item() for n, b in before.items()}
            ratios[step] = {
                n: (torch.linalg.vector_norm(p.detach() - before[n]) / torch.linalg.vector_norm(before[n])).item()
                for n, p in _names(tiny).items() if norms[step][n] > 0
            }
    sampled = [1, 2, 3, 4, 5]  # the first 20 steps are all update-ratio steps, whatever update_every says
    for name in _names(tiny):
        assert points(sink, f"param_norm/{name}") == pytest.approx({s: norms[s][name] for s in sampled}, rel=1e-5)
    # LayerNorm's bias starts at zero: no ratio is defined for it at step 1, and none is sent
    assert norms[1]["norm.bias"] == 0.0
    assert sorted(points(sink, "update_ratio/norm.bias")) == [2, 3, 4, 5]
    for name in ratios[2]:
        got = points(sink, f"update_ratio/{name}")
        want = {s: ratios[s][name] for s in sampled if name in ratios[s]}
        assert got == pytest.approx(want, rel=1e-4)
    worst = points(sink, "update_ratio_max")
    assert worst == pytest.approx({s: max(ratios[s].values()) for s in sampled}, rel=1e-4)


def _spy_on_copies(monkeypatch) -> list:
    copies = []
    real_take = grads_module.Snapshot.take

    def spy(self):
        real_take(self)
        copies.extend(weakref.ref(t) for group in self._copies for t in group)
        copies.extend(weakref.ref(t) for t in self._samples)

    monkeypatch.setattr(grads_module.Snapshot, "take", spy)
    return copies


def _one_step(model, opt, seed):
    x, y = batch_of(seed=seed)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def test_update_snapshot_is_freed_right_after_the_step(tiny, sink, monkeypatch):
    """No second copy of the model stays alive between sampled steps."""
    copies = _spy_on_copies(monkeypatch)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    due = [*range(1, 21), 21, 24, 27]  # every one of the first 20 steps, then every 3rd
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=0, update_every=3, **FAST):
        for step in range(1, 28):
            _one_step(tiny, opt, step)
            if step + 1 not in due:  # no gc.collect(): gone by reference counting, right away
                assert all(ref() is None for ref in copies), f"parameter copy still alive after step {step}"
    assert len(copies) == len(due) * len(list(tiny.parameters()))
    assert sorted(points(sink, "update_ratio_max")) == due


def test_every_step_updates_reuse_one_copy_and_free_it_at_close(tiny, sink, monkeypatch):
    """With updates sampled on consecutive steps there is no gap to free in: one copy is reused."""
    copies = _spy_on_copies(monkeypatch)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    n = len(list(tiny.parameters()))
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=0, update_every=1, **FAST):
        for step in range(1, 5):
            _one_step(tiny, opt, step)
        live = {id(r()) for r in copies if r() is not None}
        assert len(copies) == 4 * n and len(live) == n
    gc.collect()
    assert all(r() is None for r in copies)
    assert sorted(points(sink, "update_ratio_max")) == [1, 2, 3, 4]


def test_learning_rate_of_every_group_under_a_scheduler(tiny, sink):
    opt = torch.optim.SGD([
        {"params": tiny.encoder.parameters(), "lr": 0.1},
        {"params": list(tiny.norm.parameters()) + list(tiny.head.parameters()), "lr": 0.01},
    ])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.2, 0.02], total_steps=8)
    used = {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST):
        for step in range(1, 9):
            x, y = batch_of(seed=step)
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            used[step] = [g["lr"] for g in opt.param_groups]  # the rates this step really uses
            opt.step()
            opt.zero_grad()
            sched.step()
    assert points(sink, "lr/0") == pytest.approx({s: v[0] for s, v in used.items()})
    assert points(sink, "lr/1") == pytest.approx({s: v[1] for s, v in used.items()})
    assert len(set(points(sink, "lr/0").values())) > 4  # it really changed


def test_data_wait_with_a_slow_loader(tiny, sink):
    """data_wait is the time spent fetching batches, measured independently around next()."""

    def slow_loader(n):
        for i in range(n):
            time.sleep(0.04)
            yield batch_of(seed=i)

    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    fetch = {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST):
        it = slow_loader(8)
        for step in range(1, 9):
            t0 = time.perf_counter()
            x, y = next(it)
            fetch[step] = time.perf_counter() - t0
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            opt.step()
            opt.zero_grad()
    wait = points(sink, "data_wait")
    share = points(sink, "data_wait_share")
    step_time = points(sink, "step_time")
    assert sorted(wait) == list(range(2, 9))  # step 1 has no previous step to measure from
    for step, value in wait.items():
        assert fetch[step] <= value <= fetch[step] + 0.1  # slack for a busy host pre-empting the loop
        assert value <= step_time[step]
        assert share[step] == pytest.approx(value / step_time[step])


def test_data_wait_is_small_with_data_in_hand(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    data = [batch_of(seed=i) for i in range(6)]
    with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST):
        for x, y in data:
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            opt.step()
            opt.zero_grad()
    assert statistics.median(points(sink, "data_wait").values()) < 0.01  # vs 0.04 s with the slow loader


def test_sampling_cadence_and_step_counting(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=3, update_every=4, **FAST) as monitor:
        for step in range(1, 10):
            x, y = batch_of(seed=step)
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            opt.step()
            opt.zero_grad()
            assert monitor.step == step
    assert sorted(points(sink, "grad_norm_total")) == [1, 3, 6, 9]
    assert sorted(points(sink, "grad_norm_total_max")) == [1, 3, 6, 9]  # each also covering the steps between
    assert sorted(points(sink, "update_ratio_max")) == list(range(1, 10))  # dense through step 20
    assert sorted(points(sink, "lr/0")) == list(range(1, 10))


def test_layers_off_sends_only_totals(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=1, update_every=1, layers=False, **FAST):
        x, y = batch_of()
        torch.nn.functional.mse_loss(tiny(x), y).backward()
        opt.step()
    names = sink.names()
    assert {"grad_norm_total", "grad_nonfinite", "update_ratio_max"} <= names
    assert not any("/" in n and not n.startswith("lr/") for n in names)
    assert "layers" not in sink.batches[0]["run_info"]  # no per-layer rows, so no order for them


def test_nonfinite_counts_agree_on_host_and_device_paths():
    """The CPU path (norms first) and the accelerator path (on-device count) count the same values."""
    g = torch.Generator().manual_seed(3)
    group = [torch.randn(50, 7, generator=g), torch.randn(13, generator=g), torch.full((4,), 3e38)]
    group[0][3, 2] = float("nan")
    group[0][10] = float("inf")
    group[1][0] = -float("inf")
    expected = sum(int((~torch.isfinite(t)).sum()) for t in group)
    assert expected == 1 + 7 + 1
    norms = grads_module._norms(group)
    assert grads_module._nonfinite_cpu(group, norms) == expected
    assert int(grads_module._nonfinite(group)) == expected
    assert grads_module._nonfinite_cpu(group[2:], grads_module._norms(group[2:])) == 0  # overflow is finite
