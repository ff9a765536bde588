"""What the hooks see between samples: every step's gradient spike and non-finite gradients, dense update
ratios where the learning rate hurts, and update ratios held to a memory budget (checked against exact copies)."""

from __future__ import annotations

import torch

import txwatch_hooks
from tests.hooks.conftest import FAST, batch_of, points
from txwatch_hooks import grads as grads_module


def _norms(model) -> dict[str, float]:
    return {n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()}


def test_a_spike_between_samples_reaches_the_store(tiny, sink):
    """grad_every=10 samples steps 1, 10 and 20; the spike at step 7 is clipped before the step, as a
    practitioner's loop does, and shows in the interval's figures all the same."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.01)
    true: dict[int, dict[str, float]] = {}
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=10, update_every=0, every_step_cost=1, **FAST):
        for step in range(1, 21):
            x, y = batch_of(seed=step)
            loss = torch.nn.functional.mse_loss(tiny(x), y) * (1000.0 if step == 7 else 1.0)
            loss.backward()
            true[step] = _norms(tiny)
            true[step]["total"] = torch.nn.utils.clip_grad_norm_(tiny.parameters(), 1.0).item()
            opt.step()
            opt.zero_grad()
    assert sorted(points(sink, "grad_norm_total")) == [1, 10, 20]  # the samples themselves stay as they were
    biggest = points(sink, "grad_norm_total_max")
    assert sorted(biggest) == [1, 10, 20]
    assert biggest[10] == max(true[s]["total"] for s in range(2, 11)) == true[7]["total"]
    assert biggest[10] > 100 * points(sink, "grad_norm_total")[10]  # invisible in the samples alone
    assert biggest[20] == max(true[s]["total"] for s in range(11, 21))
    mean = points(sink, "grad_norm_total_mean")
    assert abs(mean[10] - sum(true[s]["total"] for s in range(2, 11)) / 9) < 1e-4 * mean[10]
    for name in ("encoder.weight", "head.bias"):
        per_layer = points(sink, f"grad_norm_max/{name}")
        assert abs(per_layer[10] - max(true[s][name] for s in range(2, 11))) < 1e-5 * per_layer[10]
    assert set(points(sink, "grad_nonfinite_steps").values()) == {0.0}


def test_non_finite_gradients_between_samples_are_counted(tiny, sink):
    """A NaN gradient on step 4, scrubbed by the loop before the step (so training goes on), is counted."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.01)
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=10, update_every=0, every_step_cost=1, **FAST):
        for step in range(1, 11):
            x, y = batch_of(seed=step)
            if step == 4:
                x = x.clone()
                x[0, 0] = float("nan")
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            for p in tiny.parameters():
                torch.nan_to_num_(p.grad, nan=0.0)
            opt.step()
            opt.zero_grad()
    assert points(sink, "grad_nonfinite_steps") == {1: 0.0, 10: 1.0}
    assert points(sink, "grad_nonfinite")[10] == 0.0  # the sampled step itself was clean


def test_update_ratios_are_dense_first_and_after_an_lr_jump(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.001)
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=0, update_every=50, **FAST):
        for step in range(1, 61):
            if step == 30:
                opt.param_groups[0]["lr"] = 0.05  # a warmup that ends abruptly, a restart, an unfreeze
            x, y = batch_of(seed=step)
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            opt.step()
            opt.zero_grad()
    assert sorted(points(sink, "update_ratio_max")) == [*range(1, 21), 30, 31, 32, 33, 34, 50]


class Wide(torch.nn.Module):
    """Large weight matrices (sampled under a small budget) beside small biases and a norm (copied whole)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(64, 384), torch.nn.Linear(384, 384), torch.nn.Linear(384, 8)
        self.norm = torch.nn.LayerNorm(384)

    def forward(self, x):
        return self.c(torch.relu(self.norm(self.b(torch.relu(self.a(x))))))


def test_update_ratios_within_a_memory_budget_match_an_exact_copy(sink, monkeypatch):
    torch.manual_seed(0)
    model = Wide()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cap = 64 * 1024  # far under the parameters' 700 KB: the big matrices are sampled
    snapshots = []
    real_init = grads_module.Snapshot.__init__

    def keep(self, *args):
        real_init(self, *args)
        snapshots.append(self)

    monkeypatch.setattr(grads_module.Snapshot, "__init__", keep)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    exact: dict[int, dict[str, float]] = {}
    g = torch.Generator().manual_seed(0)
    with txwatch_hooks.watch(model, opt, sender=sink, grad_every=0, update_every=1, update_memory_cap=cap,
                             **FAST):
        for step in range(1, 16):
            x, y = torch.randn(32, 64, generator=g), torch.randint(0, 8, (32,), generator=g)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad()
            exact[step] = {n: (torch.linalg.vector_norm(p.detach() - before[n])
                               / torch.linalg.vector_norm(before[n])).item()
                           for n, p in model.named_parameters() if before[n].abs().sum() > 0}
            assert snapshots[0].nbytes <= cap
    snapshot = snapshots[0]
    assert snapshot.budget_bytes == cap < param_bytes
    sampled = {snapshot.names[i] for i, *_ in snapshot.sampled}
    assert {"a.weight", "b.weight"} <= sampled and "norm.weight" not in sampled
    for name in exact[2]:
        got = points(sink, f"update_ratio/{name}")
        for step in range(2, 16):
            assert abs(got[step] - exact[step][name]) <= 0.05 * exact[step][name], (name, step)
        if name not in sampled:  # copied whole: exact
            assert abs(got[5] - exact[5][name]) <= 1e-4 * exact[5][name]


def test_the_cost_governor_thins_every_step_norms_where_they_cost_more_than_their_share(tiny, sink):
    """A tiny model's steps are about as cheap as reading its gradients: at 0.1% of a step, the every-step
    norms run on a few steps of each interval only, and say so; training is the same either way."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.01)
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=10, update_every=0, every_step_cost=0.001,
                             **FAST):
        for step in range(1, 41):
            x, y = batch_of(seed=step)
            torch.nn.functional.mse_loss(tiny(x), y).backward()
            opt.step()
            opt.zero_grad()
    covered = points(sink, "grad_interval_steps")
    assert sorted(covered) == [1, 10, 20, 30, 40]
    assert covered[1] == 1 and all(1 <= covered[s] < 10 for s in (20, 30, 40))
    assert sorted(points(sink, "grad_norm_total")) == [1, 10, 20, 30, 40]  # samples are never thinned


def test_a_spike_between_samples_is_seen_per_layer_under_a_grad_scaler(tiny, sink):
    """With a GradScaler the sampled norms are read scaled and unscaled by the worker; the interval's per-layer
    maxima are compared with the unscaled ones, so a spike still stands out."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with txwatch_hooks.watch(tiny, opt, sender=sink, scaler=scaler, grad_every=10, update_every=0,
                             every_step_cost=1, **FAST):
        for step in range(1, 11):
            x, y = batch_of(seed=step)
            loss = torch.nn.functional.mse_loss(tiny(x), y) * (1000.0 if step == 7 else 1.0)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(tiny.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    spike = points(sink, "grad_norm_max/encoder.weight")
    assert 10 in spike and spike[10] > 100 * points(sink, "grad_norm/encoder.weight")[10]
