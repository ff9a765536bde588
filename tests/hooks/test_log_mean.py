"""monitor.log() called several times within one optimizer step stores their mean, with their count."""

from __future__ import annotations

import logging

import pytest
import torch

import txwatch_hooks
from txwatch_hooks.means import count_name
from tests.hooks.conftest import FAST, batch_of, points
from tests.hooks.test_monitor import _CountScalarReads

MICRO = 4  # micro-batches per optimizer step


def _last_wins(sink, name):
    """step -> value as the collector stores a series: a later value of a step replaces an earlier one."""
    return dict(sink.series(name))


def _accumulating_loop(model, opt, monitor, steps, wrap=lambda t: t):
    """Gradient accumulation, logging every micro-batch's loss before the step; returns each group's losses
    keyed by the step the monitor was at when they were logged (the number of optimizer steps taken)."""
    logged: dict[int, list[float]] = {}
    for i in range(steps * MICRO):
        x, y = batch_of(seed=i)
        loss = torch.nn.functional.mse_loss(model(x), y)
        (loss / MICRO).backward()
        logged.setdefault(monitor.step, []).append(loss.item())
        monitor.log(loss=wrap(loss.detach()))
        if (i + 1) % MICRO == 0:
            opt.step()
            opt.zero_grad()
    return logged


def test_per_micro_batch_losses_are_stored_as_each_steps_mean_with_the_count(tiny, sink, caplog):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.05)
    with caplog.at_level(logging.INFO, logger="txwatch_hooks"):
        with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST) as monitor:
            logged = _accumulating_loop(tiny, opt, monitor, steps=3)
    assert sorted(logged) == [0, 1, 2]
    loss = _last_wins(sink, "loss")
    assert loss == pytest.approx({s: sum(v) / len(v) for s, v in logged.items()}, rel=1e-6)
    assert points(sink, "loss_count") == {0: MICRO, 1: MICRO, 2: MICRO}
    # only the step where averaging began went twice (its first value, then the mean); the last step's mean
    # was complete only at close()
    assert [s for s, _ in sink.series("loss")] == [0, 0, 1, 2]
    said = [r for r in caplog.records if "mean" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and "'loss'" in said[0].getMessage()


def test_accumulating_adds_no_host_reads_to_the_training_thread(tiny, sink):
    """The sums stay on the device: the loop reads no more scalars than it does unwatched."""
    def loop(monitor, opt):
        with _CountScalarReads() as mode:
            logged = _accumulating_loop(tiny, opt, monitor, steps=2)
        return mode.reads, logged

    class _Unwatched:  # the same loop's own reads (loss.item() for the expected values), nothing logged
        step = 0

        def log(self, **_):
            pass

    baseline, _ = loop(_Unwatched(), torch.optim.SGD(tiny.parameters(), lr=0.05))
    opt = torch.optim.SGD(tiny.parameters(), lr=0.05)
    with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST) as monitor:
        monitored, logged = loop(monitor, opt)
    assert monitored == baseline
    assert _last_wins(sink, "loss") == pytest.approx({s: sum(v) / len(v) for s, v in logged.items()}, rel=1e-6)


def test_one_log_per_step_is_sent_at_once_and_alone(tiny, sink, caplog):
    """The README's loop: each step's value goes as it is logged, once, with no count series."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.05)
    with caplog.at_level(logging.INFO, logger="txwatch_hooks"):
        with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST) as monitor:
            for step in range(1, 4):
                x, y = batch_of(seed=step)
                loss = torch.nn.functional.mse_loss(tiny(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                monitor.log(loss=loss)
                monitor.log(val_loss=loss * 2)  # another name at the same step is no repeat
                assert monitor.flush(5)
                assert points(sink, "loss")[step] == pytest.approx(loss.item())  # there before the next step
    assert sorted(points(sink, "loss")) == sorted(points(sink, "val_loss")) == [1, 2, 3]
    assert not {n for n in sink.names() if n.endswith("_count")}
    assert not [r for r in caplog.records if "mean" in r.getMessage()]


def test_explicit_steps_and_monitors_without_an_optimizer_are_unchanged(tiny, sink):
    with txwatch_hooks.watch(tiny, sender=sink, **FAST) as monitor:
        monitor.log(loss=1.0)
        monitor.log(loss=2.0)  # without an optimizer each log() is a step
        monitor.log(step=10, loss=3.0)
        monitor.log(step=10, loss=4.0)  # an explicit step is stored as given: the later value wins
    assert [(s, v) for s, v in sink.series("loss")] == [(1, 1.0), (2, 2.0), (10, 3.0), (10, 4.0)]
    assert "loss_count" not in sink.names()


def test_a_flush_within_the_step_does_not_cut_its_mean_short(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.05)
    with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST) as monitor:
        for value in (1.0, 2.0, 3.0):
            monitor.log(loss=value)
        assert monitor.flush(5)
        monitor.log(loss=6.0)
        monitor.log(step=7, val_loss=0.5)  # an explicit step ends the step being averaged
        monitor.log(loss=torch.tensor(8.0, dtype=torch.bfloat16))
        monitor.log(loss=torch.tensor(10.0, dtype=torch.bfloat16))
    assert _last_wins(sink, "loss") == {0: 3.0, 7: 9.0}
    assert _last_wins(sink, "loss_count") == {0: 4, 7: 2}


@pytest.mark.parametrize("name, counted", [("loss", "loss_count"), ("acc/top1", "acc_count/top1"),
                                           ("x" * 100, "x" * 94 + "_count")])
def test_the_count_series_is_a_valid_name_next_to_its_metric(name, counted):
    assert count_name(name) == counted
