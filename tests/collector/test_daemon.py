"""The daemon as a process: SIGTERM finishes accepted work; SIGKILL mid-run loses nothing a replay can't restore."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.collector.batches import T0, batch, dumps
from txwatch.store.db import make_engine, session_factory
from txwatch.store.models import Point, Rollup, Series

START_TIMEOUT_S = 60.0
POINTS_PER_SERIES = 250
BATCHES = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(db_url: str, log_path) -> tuple[subprocess.Popen, str]:
    return start_daemon_on(db_url, log_path, free_port())


def start_daemon_on(db_url: str, log_path, port: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXWATCH_")}
    proc = subprocess.Popen([sys.executable, "-m", "txwatch", "serve", "--port", str(port), "--db", db_url],
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode}:\n{open(log_path).read()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"daemon not ready:\n{open(log_path).read()}")


def the_batch(seq: int) -> bytes:
    lo = seq * POINTS_PER_SERIES
    pts = range(lo, lo + POINTS_PER_SERIES)
    return dumps(batch(run="long", seq=seq, series={
        "loss": [[s, T0 + s, 1.0 / (s + 1)] for s in pts],
        "grad_norm/enc.weight": [[s, T0 + s, float(s % 7)] for s in pts],
    }))


def check_consistent(db_url: str, expected_points: int) -> None:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as s:
            assert s.scalar(select(func.count()).select_from(Point)) == expected_points
            for sid, counted in s.execute(select(Series.id, Series.points)).all():
                stored = s.scalar(select(func.count()).select_from(Point).where(Point.series_id == sid))
                summarized = s.scalar(select(func.sum(Rollup.n)).where(Rollup.series_id == sid, Rollup.level == 16))
                assert counted == stored == summarized == expected_points // 2
    finally:
        engine.dispose()


@pytest.mark.slow
def test_kill_9_mid_run_then_replay_ends_with_exactly_the_points_sent(db_url, tmp_path):
    log = tmp_path / "daemon.log"
    proc, url = start_daemon(db_url, log)
    acked: set[int] = set()
    stop = threading.Event()

    def send_all():
        with httpx.Client(base_url=url, timeout=10) as c:
            for seq in range(BATCHES):
                if stop.is_set():
                    return
                try:
                    r = c.post("/api/v1/ingest", content=the_batch(seq), headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    return  # the daemon died under us: the hooks would spool from here
                if r.status_code == 200:
                    acked.add(seq)

    sender = threading.Thread(target=send_all)
    sender.start()
    while len(acked) < BATCHES // 3 and sender.is_alive():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-run, most likely mid-batch
    proc.wait(timeout=30)
    stop.set()
    sender.join(timeout=30)
    assert 0 < len(acked) < BATCHES

    proc, url = start_daemon(db_url, log)  # same database
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            # the hooks replay everything not acknowledged; resending everything is the harder case
            answers = [c.post("/api/v1/ingest", content=the_batch(seq), headers={"content-type": "application/json"})
                       for seq in range(BATCHES)]
            assert all(a.status_code == 200 for a in answers)
            assert all(answers[seq].json()["duplicate"] for seq in acked)
            steps = [p["step"] for p in c.get("/api/v1/runs/p/long/series/loss", params={"raw": "true",
                                                                                           "max_points": 100000}).json()["points"]]
            assert steps == list(range(BATCHES * POINTS_PER_SERIES))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    check_consistent(db_url, 2 * BATCHES * POINTS_PER_SERIES)


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_flight_then_exits_cleanly(db_url, tmp_path):
    log = tmp_path / "daemon.log"
    proc, url = start_daemon(db_url, log)
    n = 150_000
    big = dumps(batch(run="big", series={f"m{i}": [[s, T0 + s, 0.5] for s in range(n // 10)] for i in range(10)}))
    result: dict = {}

    def send():
        try:
            result["r"] = httpx.post(url + "/api/v1/ingest", content=big, timeout=60,
                                     headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            result["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the daemon is working on it
        m = httpx.get(url + "/metrics", timeout=5).text
        if "txwatch_ingest_in_flight 1.0" in m:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    sender.join(timeout=60)
    assert proc.wait(timeout=60) == 0, open(log).read()
    assert "error" not in result, result
    assert result["r"].status_code == 200 and result["r"].json()["points"] == n
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/healthz", timeout=2)  # no longer accepting
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Point)) == n
    engine.dispose()
    assert "collector stopped" in open(log).read()


@pytest.mark.slow
def test_real_hooks_spool_and_replay_across_a_kill_9(db_url, tmp_path):
    """The daemon dies (SIGKILL) under a training job watched by the real hooks and comes back on the same
    port: the hooks spool, replay, and the run ends with every logged loss exactly once."""
    log = tmp_path / "daemon.log"
    steps_ = 400
    proc, url = start_daemon(db_url, log)
    port = url.rsplit(":", 1)[1]
    job = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hooked_job.py")), url,
                            str(tmp_path / "spool"), str(steps_)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until part of the run has arrived
            r = httpx.get(url + "/api/v1/runs/p/hooked/series", timeout=5)
            if r.status_code == 200 and any(s["name"] == "loss" and s["points"] > 50 for s in r.json()["series"]):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(1.0)  # the job keeps training and spooling meanwhile
        proc, url = start_daemon_on(db_url, log, int(port))
        out, _ = job.communicate(timeout=240)
        assert "delivered" in out and "NOT" not in out, out
        pts = httpx.get(url + "/api/v1/runs/p/hooked/series/loss",
                        params={"raw": "true", "max_points": 100000}, timeout=30).json()["points"]
        assert sorted(p["value"] for p in pts) == [float(k) for k in range(steps_)]
        assert len({p["step"] for p in pts}) == steps_
        run = httpx.get(url + "/api/v1/runs/p/hooked", timeout=30).json()
        assert run["status"] == "finished"
    finally:
        if job.poll() is None:
            job.kill()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
