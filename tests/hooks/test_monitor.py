"""The Monitor a user holds: log(), steps, run names, how a run ends, what goes on the wire."""

from __future__ import annotations

import logging
import math
import re
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import txwatch_hooks
from txwatch.wire.batch import Batch
from txwatch_hooks import records
from tests.hooks.conftest import FAST, batch_of, points


def _train(model, opt, monitor, steps, log_loss=True):
    for step in range(steps):
        x, y = batch_of(seed=step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if log_loss:
            monitor.log(loss=loss)


def test_every_batch_is_valid_for_the_collector(tiny, sink):
    """What the hooks build validates against the collector's own schema, NaN and Inf included."""
    opt = torch.optim.Adam(tiny.parameters(), lr=1e-3)
    with txwatch_hooks.watch(tiny, opt, sender=sink, run="wire-check", project="hooks-tests",
                             config={"lr": 1e-3, "dtype": torch.float32, "layers": (1, 2)},
                             grad_every=1, update_every=1, **FAST) as monitor:
        _train(tiny, opt, monitor, 3)
        monitor.log(val_loss=float("nan"), weird=float("inf"), neg=-float("inf"))
    assert sink.batches
    for raw in sink.batches:
        batch = Batch.model_validate(raw)
        assert (batch.run, batch.project, batch.rank) == ("wire-check", "hooks-tests", 0)
    first = sink.batches[0]
    assert first["seq"] > 0  # a clock-based base: a resumed run's new process never reuses stored seqs
    assert first["run_info"]["config"] == {"lr": 1e-3, "dtype": "torch.float32", "layers": [1, 2]}
    assert first["run_info"]["hooks_version"] == txwatch_hooks.__version__
    # The model's parameter order, named as the per-layer series name their layers (the heatmap's rows).
    assert first["run_info"]["layers"] == [n for n, _ in tiny.named_parameters()]
    per_layer = {n.split("/", 1)[1] for n in sink.names() if n.startswith(("grad_norm/", "update_ratio/"))}
    assert per_layer and per_layer <= set(first["run_info"]["layers"])
    assert first["events"][0]["kind"] == "start"
    assert [b["seq"] for b in sink.batches] == list(range(first["seq"], first["seq"] + len(sink.batches)))
    assert all("run_info" not in b for b in sink.batches[1:])
    assert math.isnan(points(sink, "val_loss")[3])
    assert points(sink, "weird")[3] == math.inf and points(sink, "neg")[3] == -math.inf
    end = sink.events("end")
    assert len(end) == 1 and end[0]["status"] == "finished" and end[0]["step"] == 3


def test_a_model_with_more_parameters_than_the_collector_orders_still_sends_valid_run_info(sink):
    # The collector refuses run info naming more than 10,000 layers (the whole batch would go): the hooks
    # send the first 10,000; the rest of the heatmap's rows follow in the order they arrive.
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1)) for _ in range(10_050)])
    with txwatch_hooks.watch(model, sender=sink, **FAST) as monitor:
        monitor.log(loss=1.0)
    first = Batch.model_validate(sink.batches[0])
    assert first.run_info.layers == [str(i) for i in range(10_000)]


def test_loss_tensor_is_not_read_on_the_training_thread(tiny, sink):
    """monitor.log(loss=tensor) forces no host read in the loop: the worker thread reads it later."""
    reads = []

    class Spy(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("item", "tolist", "__float__", "cpu", "numpy"):
                reads.append(threading.current_thread().name)
            return super().__torch_function__(func, types, args, kwargs or {})

    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST) as monitor:
        for step in range(3):
            x, y = batch_of(seed=step)
            loss = torch.nn.functional.mse_loss(tiny(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.log(loss=loss.as_subclass(Spy))
        assert monitor.flush(5)
    assert reads and set(reads) == {"txwatch.transport"}
    assert sorted(points(sink, "loss")) == [1, 2, 3]


class _CountScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_monitoring_adds_no_host_reads_to_the_training_thread(tiny, sink):
    """Every-step capture (norms, ratios, LR, loss) adds no .item()-style reads on the training thread."""
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)

    def loop(monitor):
        mode = _CountScalarReads()
        with mode:
            for step in range(4):
                x, y = batch_of(seed=step)
                loss = torch.nn.functional.mse_loss(tiny(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(tiny.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
                if monitor is not None:
                    monitor.log(loss=loss)
        return mode.reads

    baseline = loop(None)
    with txwatch_hooks.watch(tiny, opt, sender=sink, grad_every=1, update_every=1, **FAST) as monitor:
        monitored = loop(monitor)
    assert monitored == baseline
    assert sorted(points(sink, "grad_norm_total")) == [1, 2, 3, 4]


def test_explicit_steps_and_steps_without_an_optimizer(tiny, sink):
    with txwatch_hooks.watch(tiny, sender=sink, **FAST) as monitor:
        monitor.log(loss=1.0)
        monitor.log(loss=2.0)
        monitor.log(step=10, loss=3.0, val_loss=4.0)
        monitor.log(loss=5.0)
        assert monitor.step == 11
    assert points(sink, "loss") == {1: 1.0, 2: 2.0, 10: 3.0, 11: 5.0}
    assert points(sink, "val_loss") == {10: 4.0}


def test_log_after_optimizer_step_lands_on_that_step(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST) as monitor:
        _train(tiny, opt, monitor, 3)
        monitor.log(step=100, val_loss=0.5)  # moves the counter: the next optimizer step is 101
        _train(tiny, opt, monitor, 1)
    assert sorted(points(sink, "loss")) == [1, 2, 3, 101]
    assert sorted(points(sink, "lr/0")) == [1, 2, 3, 101]


def test_bad_values_are_dropped_counted_and_logged_once(tiny, sink, caplog):
    with caplog.at_level(logging.WARNING, logger="txwatch_hooks"):
        with txwatch_hooks.watch(tiny, sender=sink, **FAST) as monitor:
            for _ in range(3):
                monitor.log(loss=torch.ones(3), good=1.5, text="hello")
            monitor.log(step=-1, loss=1.0)
            monitor.log(**{"bad name!": 1.0})
            assert monitor.dropped["bad_value"] == 3 + 3 + 1 + 1
    assert [v for _, v in sink.series("good")] == [1.5, 1.5, 1.5]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("'loss'" in m and "shape (3,)" in m for m in messages) == 1
    assert sum("'text'" in m for m in messages) == 1
    assert any("bad name!" in m for m in messages)
    assert sink.batches[-1]["client"]["dropped"]["bad_value"] == 8


def test_generated_run_name_is_readable_and_unique(tiny, sink):
    names = set()
    for _ in range(3):
        with txwatch_hooks.watch(tiny, sender=sink, **FAST) as monitor:
            names.add(monitor.run)
    assert len(names) == 3
    for name in names:
        assert re.fullmatch(r"[a-z]+-[a-z]+-\d{8}-\d{4}-[0-9a-f]{4}", name), name


def test_run_and_project_from_environment(tiny, sink, monkeypatch):
    monkeypatch.setenv("TXWATCH_RUN", "env-run")
    monkeypatch.setenv("TXWATCH_PROJECT", "env-project")
    with txwatch_hooks.watch(tiny, sender=sink, **FAST) as monitor:
        assert (monitor.project, monitor.run) == ("env-project", "env-run")
    with txwatch_hooks.watch(tiny, sender=sink, run="explicit", **FAST) as monitor:
        assert monitor.run == "explicit"


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"run": "my run/1"}, ValueError, "for example 'my-run-1'"),
        ({"project": ""}, None, None),  # empty means "not given": the default project
        ({"grad_evry": 5}, TypeError, "unexpected keyword argument 'grad_evry'"),
        ({"grad_every": -1}, ValueError, "grad_every must be at least 0"),
        ({"schedule_delay_s": "soon"}, TypeError, "schedule_delay_s must be a number of seconds"),
        ({"endpoint": "collector:8642"}, ValueError, "not an http(s) URL"),
        ({"layers": "yes"}, TypeError, "layers must be True or False"),
    ],
)
def test_misuse_raises_at_once_with_a_clear_message(tiny, sink, kwargs, error, words):
    if error is None:
        txwatch_hooks.watch(tiny, sender=sink, **FAST, **kwargs).close()
        return
    with pytest.raises(error, match=re.escape(words)):
        txwatch_hooks.watch(tiny, sender=sink, **{**FAST, **kwargs})


def test_model_must_be_a_module(sink):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        txwatch_hooks.watch("model", sender=sink, **FAST)


def test_a_bad_optimizer_is_refused_before_anything_is_hooked(tiny, sink):
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        txwatch_hooks.watch(tiny, "adam", sender=sink, **FAST)
    assert not tiny._forward_pre_hooks


def test_config_from_a_dataclass_or_namespace(tiny, sink):
    import argparse
    import dataclasses

    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.1
        name: str = "x"

    for config, want in ((Cfg(), {"lr": 0.1, "name": "x"}), (argparse.Namespace(lr=0.2), {"lr": 0.2})):
        sink.batches.clear()
        with txwatch_hooks.watch(tiny, sender=sink, config=config, **FAST):
            pass
        assert sink.batches[0]["run_info"]["config"] == want


def test_context_manager_reports_a_crash_and_lets_it_through(tiny, sink):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with txwatch_hooks.watch(tiny, opt, sender=sink, **FAST) as monitor:
            _train(tiny, opt, monitor, 2)
            raise RuntimeError("boom")
    (end,) = sink.events("end")
    assert end["status"] == "crashed" and end["step"] == 2
    assert end["error"] == {"type": "RuntimeError", "message": "boom"}
    assert monitor.closed


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 MemoryError("cannot allocate")])
def test_out_of_memory_is_reported_as_oom_with_memory_figures(tiny, sink, exc):
    with pytest.raises(type(exc)):
        with txwatch_hooks.watch(tiny, sender=sink, **FAST):
            raise exc
    (end,) = sink.events("end")
    assert end["status"] == "oom"
    assert end["error"]["type"] == ("torch.OutOfMemoryError" if isinstance(exc, torch.OutOfMemoryError)
                                    else "MemoryError")
    assert end["memory"]["cpu"]["rss"] > 0 and end["memory"]["cpu"]["total"] > 0


def test_close_is_idempotent_and_later_logs_are_ignored(tiny, sink):
    monitor = txwatch_hooks.watch(tiny, sender=sink, **FAST)
    assert monitor.close() is True
    assert monitor.close() is True
    monitor.log(loss=1.0)
    assert sink.series("loss") == [] and len(sink.events("end")) == 1


def test_records_read_tensors_only_when_emitted():
    t = torch.tensor(2.5)
    rec = records.Points(3, 1.0, {"loss": t})
    t.fill_(9.0)  # the Monitor clones before queueing; a raw record reads whatever is there at emit time
    from txwatch_hooks.wire import BatchBuilder

    b = BatchBuilder("r", "p", 0)
    rec.emit(b)
    assert b.series == {"loss": [[3, 1.0, 9.0]]}


def test_log_copies_the_tensor_so_in_place_changes_do_not_leak(tiny, sink):
    with txwatch_hooks.watch(tiny, sender=sink, **FAST) as monitor:
        running = torch.tensor(1.0)
        monitor.log(step=1, loss=running)
        running.add_(41.0)
    assert points(sink, "loss") == {1: 1.0}
