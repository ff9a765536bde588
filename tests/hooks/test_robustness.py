"""Nothing from txwatch reaches the training loop: every part of the monitor fails, training completes."""

from __future__ import annotations

import logging

import pytest
import torch

import txwatch_hooks
from txwatch_hooks import capture, records, system
from txwatch_hooks.spool import Spool
from tests.hooks.conftest import FAST, TinyNet, batch_of


def _train(model, monitor=None, steps=6):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if monitor is not None:
        monitor._attach_optimizer(opt)
    for step in range(steps):
        x, y = batch_of(seed=step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if monitor is not None:
            monitor.log(loss=loss, val_loss=loss * 2)
            monitor.flush(0.2)
    return [p.detach().clone() for p in model.parameters()]


class Boom(Exception):
    pass


def boom(*args, **kwargs):
    raise Boom("injected failure")


def test_every_part_failing_leaves_training_untouched(monkeypatch, caplog, tmp_path):
    torch.manual_seed(0)
    expected = _train(TinyNet())

    class BrokenSender:
        def send(self, batch, timeout_s):
            raise Boom("sender exploded")

    for target, name in [
        (capture, "grad_stats"),  # gradient norms at backward end
        (capture.Snapshot, "__init__"),  # update-ratio parameter copy
        (capture.Capture, "_step_points"),  # lr / step time / data wait
        (capture.Capture, "note_batch_start"),  # data-wait timing in the forward pre-hook
        (records.Points, "emit"),  # the worker turning records into points
        (records.SampledStep, "emit"),
        (Spool, "append"),  # spooling what the broken sender could not send
        (system.SystemSampler, "sample_once"),  # device and process figures
        (system.SystemSampler, "_nvml_handle"),
    ]:
        monkeypatch.setattr(target, name, boom)
    torch.manual_seed(0)
    model = TinyNet()
    with caplog.at_level(logging.WARNING, logger="txwatch_hooks"):
        monitor = txwatch_hooks.watch(model, sender=BrokenSender(), spool_dir=tmp_path, grad_every=1,
                                      update_every=1, schedule_delay_s=0.01, system_interval_s=0.01,
                                      heartbeat_s=0.01, crash_hooks=False)
        # and the queue itself: submit() raising must not escape the hooks or log()
        real_submit = monitor._transport.submit
        calls = {"n": 0}

        def flaky_submit(record):
            calls["n"] += 1
            if calls["n"] % 2:
                raise Boom("queue exploded")
            return real_submit(record)

        monitor._transport.submit = flaky_submit
        monitor._capture._submit = flaky_submit
        got = _train(model, monitor)
        monitor.close(0.5)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)  # bit-identical training
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    components = [m.split(" failed")[0].removeprefix("txwatch: ") for m in failures]
    assert len(components) == len(set(components)), f"a failure was logged more than once: {components}"
    for part in ("gradient capture", "update ratio", "step metrics", "data-wait timing", "log()",
                 "turning a record into points", "sending to BrokenSender"):
        assert part in components, (part, components)


def test_a_failing_backward_callback_does_not_surface_from_backward(monkeypatch, sink):
    class Engine:
        queue_callback = staticmethod(boom)

    class FakeVariable:
        _execution_engine = Engine()

    monkeypatch.setattr(capture, "Variable", FakeVariable)
    model = TinyNet()
    with txwatch_hooks.watch(model, sender=sink, grad_every=1, **FAST) as monitor:
        _train(model, monitor, steps=2)
    assert [s for s, _ in sink.series("loss")] == [1, 2]


@pytest.mark.parametrize("exc", [KeyboardInterrupt])
def test_interrupts_are_not_swallowed(monkeypatch, sink, exc):
    """A Ctrl-C inside a hook is the user's, not an internal failure: it must reach them."""

    def interrupt(*a, **k):
        raise exc()

    monkeypatch.setattr(capture, "grad_stats", interrupt)
    model = TinyNet()
    with pytest.raises(exc):
        with txwatch_hooks.watch(model, sender=sink, grad_every=1, **FAST) as monitor:
            _train(model, monitor, steps=2)
    (end,) = sink.events("end")
    assert end["status"] == "crashed" and end["error"]["type"] == "KeyboardInterrupt"
