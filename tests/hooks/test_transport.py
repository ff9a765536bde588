"""Transport: a real HTTP collector stand-in on 127.0.0.1 that goes down, hangs, refuses, and comes back."""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time

import pytest
import torch

import txwatch_hooks
from txwatch_hooks import transport
from txwatch_hooks.options import resolve_endpoint
from txwatch_hooks.testing import CollectorStandIn, MemorySender, free_port
from tests.hooks.conftest import FAST, batch_of

QUIET = {"system_interval_s": 0, "heartbeat_s": 60.0, "crash_hooks": False}


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared host, two-thread OpenMP steps swing by 100x and hide the signal."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spooled(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".json")) if folder.exists() else []


def _step(model, opt, seed):
    x, y = batch_of(seed=seed)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


@pytest.mark.slow
def test_collector_down_then_hanging_then_back(tiny, stand_in, tmp_path, monkeypatch, one_thread):
    """Every point arrives exactly once and in order, while the loop's step time stays flat."""
    monkeypatch.setattr(transport, "RETRY_BACKOFF_MAX_S", 0.3)  # notice the return quickly in a short test
    opt = torch.optim.SGD(tiny.parameters(), lr=0.01)
    # a hung request holds the worker for 1.5 s: a training step waiting on it would take that long too
    monitor = txwatch_hooks.watch(tiny, opt, run="flaky-collector", endpoint=stand_in.url, spool_dir=tmp_path,
                                  schedule_delay_s=0.05, export_timeout_s=1.5, **QUIET)
    folder = tmp_path / "default" / "flaky-collector" / "rank0"
    durations: dict[str, list[float]] = {"up": [], "down": [], "hang": [], "back": []}
    steps_per_phase = 40
    for phase in durations:
        if phase == "down":
            stand_in.stop()  # connection refused
        elif phase == "hang":
            stand_in.mode = "hang"  # accepts, never answers: each send waits out its 0.5 s timeout
            stand_in.start()
        elif phase == "back":
            stand_in.mode = "up"
        for _ in range(steps_per_phase):
            t0 = time.perf_counter()
            time.sleep(0.01)  # stands for real work, so a blocked loop would stand out
            loss = _step(tiny, opt, monitor.step)
            monitor.log(loss=loss)
            durations[phase].append(time.perf_counter() - t0)
        if phase in ("down", "hang"):
            assert _spooled(folder), f"nothing was spooled while the collector was {phase}"
    total = 4 * steps_per_phase
    # replayed while the job still runs, not only at close()
    assert stand_in.wait_for(lambda: len(stand_in.series("loss")) == total, timeout_s=15)
    assert monitor.close(5.0)

    loss_steps = [s for s, _ in stand_in.series("loss")]
    assert loss_steps == list(range(1, total + 1))  # each once, in order
    seqs = [b["seq"] for b in stand_in.batches]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no batch lost, none out of order
    assert stand_in.duplicates == 0
    assert not _spooled(folder)
    assert monitor.dropped == {"queue_full": 0, "spool_full": 0}
    assert [e["status"] for e in stand_in.events("end")] == ["finished"]
    up = statistics.median(durations["up"])
    for phase in ("down", "hang", "back"):
        assert max(durations[phase]) < 1.0, f"a step blocked while the collector was {phase}"
        assert statistics.median(durations[phase]) < 3 * up + 0.02, (phase, durations[phase])


def test_a_later_process_replays_what_an_earlier_one_left(tiny, tmp_path):
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}"
    first = txwatch_hooks.watch(tiny, run="resumed", endpoint=url, spool_dir=tmp_path, export_timeout_s=0.2,
                                schedule_delay_s=0.02, **QUIET)
    for i in range(5):
        first.log(loss=float(i))
    assert first.close(timeout_s=0.3) is False  # could not deliver: it stays on disk
    left = _spooled(tmp_path / "default" / "resumed" / "rank0")
    assert left
    server = CollectorStandIn()
    server.port = port
    with server:
        second = txwatch_hooks.watch(tiny, run="resumed", endpoint=url, spool_dir=tmp_path, schedule_delay_s=0.02,
                                     **QUIET)
        second.log(loss=100.0)
        assert second.close(5.0)
    seqs = [b["seq"] for b in server.batches]
    assert seqs == sorted(set(seqs))  # the spool first, in order, then the new process's batches after them
    assert [v for _, v in server.series("loss")] == [0.0, 1.0, 2.0, 3.0, 4.0, 100.0]
    assert [e["kind"] for e in server.events() if e["kind"] != "heartbeat"] == ["start", "end", "start", "end"]


def test_spool_is_bounded_and_drops_the_oldest_counted(tiny, tmp_path):
    port = free_port()
    monitor = txwatch_hooks.watch(tiny, run="bounded", endpoint=f"http://127.0.0.1:{port}", spool_dir=tmp_path,
                                  spool_max_bytes=4000, max_batch_size=20, schedule_delay_s=0.01,
                                  export_timeout_s=0.2, **QUIET)
    folder = tmp_path / "default" / "bounded" / "rank0"
    for i in range(400):
        monitor.log(step=i + 1, loss=float(i))
    assert monitor.flush(0.5) is False
    size = sum((folder / f).stat().st_size for f in _spooled(folder))
    assert 0 < size <= 4000
    dropped = monitor.dropped["spool_full"]
    assert dropped > 0
    server = CollectorStandIn()
    server.port = port
    with server:
        assert monitor.close(5.0)
    got = server.series("loss")
    # every point delivered or counted (the start event may be counted too); close() may drop more
    assert len(got) + monitor.dropped["spool_full"] >= 400
    assert got[-1] == (400, 399.0)  # the newest survive
    steps = [s for s, _ in got]
    assert steps == sorted(steps)
    assert server.batches[-1]["client"]["dropped"]["spool_full"] == dropped


def test_full_queue_drops_and_counts_without_blocking(tiny):
    entered, release = threading.Event(), threading.Event()

    class Stuck(MemorySender):
        def send(self, batch, timeout_s):
            entered.set()
            release.wait(10)
            return super().send(batch, timeout_s)

    sink = Stuck()
    monitor = txwatch_hooks.watch(tiny, sender=sink, max_queue_size=10, schedule_delay_s=0.01, **QUIET)
    assert entered.wait(10)  # the worker is now stuck sending the start event
    t0 = time.perf_counter()
    for i in range(100):
        monitor.log(step=i + 1, loss=float(i))
    assert time.perf_counter() - t0 < 0.5
    assert monitor.dropped["queue_full"] == 90  # ten fit in the queue
    release.set()
    assert monitor.close(5.0)
    assert [s for s, _ in sink.series("loss")] == list(range(1, 11))
    assert sink.batches[-1]["client"]["dropped"]["queue_full"] == 90


def test_close_never_hangs_on_a_hanging_collector(tiny, stand_in, tmp_path):
    stand_in.mode = "hang"
    monitor = txwatch_hooks.watch(tiny, endpoint=stand_in.url, spool_dir=tmp_path, export_timeout_s=30.0,
                                  schedule_delay_s=0.02, **QUIET)
    monitor.log(loss=1.0)
    t0 = time.perf_counter()
    assert monitor.close(timeout_s=1.0) is False
    assert time.perf_counter() - t0 < 4.0  # not the 30 s a send may take
    stand_in.mode = "up"


def test_bearer_token_is_sent_and_never_logged(tiny, tmp_path, caplog, monkeypatch):
    secret = "s3cret-ingest-token"
    with CollectorStandIn(token=secret) as server:
        monkeypatch.setenv("TXWATCH_TOKEN", secret)
        with txwatch_hooks.watch(tiny, endpoint=server.url, spool_dir=tmp_path, **FAST) as monitor:
            monitor.log(loss=1.0)
        assert server.series("loss") == [(1, 1.0)]
        with caplog.at_level(logging.DEBUG):
            monitor = txwatch_hooks.watch(tiny, endpoint=server.url, token="wrong-" + secret, spool_dir=tmp_path,
                                          **FAST)
            monitor.log(loss=2.0)
            assert monitor.close(0.5) is False
        assert server.series("loss") == [(1, 1.0)]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "TXWATCH_TOKEN" in text and "401" in text
    assert secret not in text


def test_rejected_batches_are_dropped_counted_and_logged_once(tiny, stand_in, tmp_path, caplog):
    stand_in.mode = "reject"
    with caplog.at_level(logging.WARNING):
        monitor = txwatch_hooks.watch(tiny, endpoint=stand_in.url, spool_dir=tmp_path, **FAST)
        for i in range(3):
            monitor.log(loss=float(i))
            monitor.flush(2.0)
        monitor.close(2.0)
    assert monitor.dropped["rejected"] >= 4  # three points, the start and end events
    assert not _spooled(tmp_path / "default" / monitor.run / "rank0")
    assert sum("rejected a batch" in r.getMessage() for r in caplog.records) == 1
    assert any("step must be >= 0" in r.getMessage() for r in caplog.records)


def test_busy_collector_is_retried(tiny, stand_in, tmp_path):
    stand_in.mode = "busy"
    monitor = txwatch_hooks.watch(tiny, endpoint=stand_in.url, spool_dir=tmp_path, **FAST)
    monitor.log(loss=1.0)
    assert monitor.flush(0.3) is False
    stand_in.mode = "up"
    assert monitor.close(5.0)
    assert stand_in.series("loss") == [(1, 1.0)]


def test_large_records_are_split_into_bounded_batches(tiny, sink):
    with txwatch_hooks.watch(tiny, sender=sink, max_batch_size=50, **FAST) as monitor:
        monitor.log(step=1, **{f"m{i}": float(i) for i in range(180)})
    assert all(sum(len(v) for v in b["series"].values()) <= 50 for b in sink.batches)
    assert len({n for b in sink.batches for n in b["series"]}) == 180


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_stays_silent_and_parent_carries_on(tiny, sink):
    with txwatch_hooks.watch(tiny, sender=sink, **FAST) as monitor:
        monitor.log(step=1, loss=1.0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a DataLoader worker, say
            ok = False
            try:
                monitor.log(step=2, loss=2.0)
                t = monitor._transport
                ok = t._disabled and t._thread is None and not t._queue
            finally:
                os.write(write, b"1" if ok else b"0")
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.waitpid(pid, 0)
        monitor.log(step=3, loss=3.0)
    assert sink.series("loss") == [(1, 1.0), (3, 3.0)]


def test_no_endpoint_and_no_collector_package_spools_and_says_so(tiny, tmp_path, monkeypatch, caplog):
    import txwatch_hooks.monitor as monitor_module

    monkeypatch.setattr(monitor_module.importlib.util, "find_spec", lambda name: None)
    with caplog.at_level(logging.WARNING):
        monitor = txwatch_hooks.watch(tiny, run="offline", spool_dir=tmp_path, **FAST)
        monitor.log(loss=1.0)
        t0 = time.perf_counter()
        assert monitor.close(5.0) is False
        assert time.perf_counter() - t0 < 1.0  # nothing to wait for
    assert _spooled(tmp_path / "default" / "offline" / "rank0")
    assert sum("no collector endpoint" in r.getMessage() for r in caplog.records) == 1


def test_endpoint_forms():
    assert resolve_endpoint("http://h:8642") == "http://h:8642/api/v1/ingest"
    assert resolve_endpoint("http://h:8642/") == "http://h:8642/api/v1/ingest"
    assert resolve_endpoint("https://h/txwatch/api/v1/ingest") == "https://h/txwatch/api/v1/ingest"
    assert resolve_endpoint("https://h/txwatch") == "https://h/txwatch/api/v1/ingest"
    assert resolve_endpoint(None) is None
