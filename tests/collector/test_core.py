"""The collector core on SQLite and PostgreSQL: idempotent ingest, faithful NaN/Inf, run lifecycle, rules."""

from __future__ import annotations

import math
import threading
import time

import pytest
from sqlalchemy import func, select

from tests.collector.batches import T0, batch, steps
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store import downsample, plan, queries
from txwatch.store.db import make_engine, session_factory, upgrade
from txwatch.store.models import Point, Rollup, Run, Series


def ingest(c: Collector, b: dict):
    return c.ingest(Batch.model_validate(b))


@pytest.fixture
def sessions(store_engine):
    return session_factory(store_engine)


def points_of(sessions, run_ref: str, name: str) -> list[tuple]:
    with sessions() as s:
        run, _ = queries.find_run(s, run_ref)
        series = queries.get_series(s, run, name)
        return [(p["step"], p["value"]) for p in downsample.all_points(s, series)]


def test_replayed_batch_is_acknowledged_and_not_stored_twice(sessions):
    c = Collector(sessions)
    b = batch(series=steps("loss", 0, 10))
    first, again = ingest(c, b), ingest(c, b)
    assert (first.accepted, first.duplicate, first.points) == (True, False, 10)
    assert (again.accepted, again.duplicate, again.points) == (True, True, 0)
    # a fresh collector (a restarted daemon) knows it too: the record is in the database
    assert ingest(Collector(sessions), b).duplicate
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Point)) == 10
        assert s.scalar(select(Series.points).where(Series.name == "loss")) == 10
    # same seq from another rank is another batch
    assert not ingest(c, batch(rank=1, series=steps("rank1.rss", 0, 3))).duplicate


def test_nan_and_infinities_round_trip(sessions):
    c = Collector(sessions)
    values = [1.5, math.nan, math.inf, -math.inf, -0.0, 1e308]
    ingest(c, batch(series={"loss": [[i, T0 + i, v] for i, v in enumerate(values)]}))
    got = points_of(sessions, "r", "loss")
    assert [s for s, _ in got] == list(range(6))
    assert got[0][1] == 1.5 and math.isnan(got[1][1])
    assert got[2][1] == math.inf and got[3][1] == -math.inf and got[5][1] == 1e308
    with sessions() as s:
        run, p = queries.find_run(s, "r")
        assert queries.run_detail(s, run, p)["summary"]["last_values"]["loss"] == 1e308
    ingest(c, batch(seq=1, series={"loss": [[6, T0 + 6, math.nan]]}))
    with sessions() as s:
        run, p = queries.find_run(s, "r")
        assert math.isnan(queries.list_runs(s)[0]["last_loss"])


def test_run_info_is_merged_and_events_drive_status(sessions):
    c = Collector(sessions)
    ingest(c, batch(run_info={"config": {"lr": 0.1, "bs": 8}, "host": "gpu-3", "pid": 42, "started": T0},
                    events=[{"kind": "start", "time": T0}], series=steps("loss", 0, 5)))
    ingest(c, batch(seq=1, run_info={"config": {"lr": 0.05}, "device": "cuda:0"},
                    events=[{"kind": "heartbeat", "time": T0 + 5, "step": 7}]))
    with sessions() as s:
        run = s.scalar(select(Run))
        assert run.config == {"lr": 0.05, "bs": 8}
        assert run.info["device"] == "cuda:0" and run.info["pid"] == 42 and run.host == "gpu-3"
        assert run.status == "running" and run.steps == 7
    ingest(c, batch(seq=2, events=[{
        "kind": "end", "time": T0 + 9, "step": 9, "status": "oom",
        "error": {"type": "torch.OutOfMemoryError", "message": "CUDA out of memory"},
        "memory": {"cuda:0": {"allocated": 1.2e10, "reserved": 1.4e10, "peak": 1.5e10, "total": 1.6e10}}}]))
    with sessions() as s:
        run, p = queries.find_run(s, "r")
        d = queries.run_detail(s, run, p)
    assert (d["status"], d["end_reason"], d["steps"]) == ("crashed", "oom", 9)
    assert d["error"] == {"type": "torch.OutOfMemoryError", "message": "CUDA out of memory"}
    assert d["end_memory"]["cuda:0"]["peak"] == 1.5e10
    assert d["ended"].startswith("2025-11-29")
    ingest(c, batch(seq=3, events=[{"kind": "end", "time": T0 + 10, "status": "finished"}]))
    with sessions() as s:
        assert s.scalar(select(Run.status)) == "finished"


def test_rewritten_steps_last_write_wins_and_summaries_follow(sessions):
    c = Collector(sessions)
    ingest(c, batch(series=steps("loss", 0, 100, lambda s: float(s))))
    # a later batch rewrites steps 10..19 (e.g. a resumed run) and repeats a step inside itself
    rewrite = {"loss": [[s, T0, -5.0] for s in range(10, 20)] + [[15, T0, -7.0]]}
    r = ingest(c, batch(seq=1, series=rewrite))
    assert r.points == 10
    got = dict(points_of(sessions, "r", "loss"))
    assert len(got) == 100 and got[12] == -5.0 and got[15] == -7.0 and got[50] == 50.0
    with sessions() as s:
        assert s.scalar(select(Series.points)) == 100
        assert s.scalar(select(Series.last_step)) == 99  # an older step does not become "latest"
        mins = s.execute(select(Rollup.level, func.min(Rollup.vmin), func.sum(Rollup.n)).group_by(Rollup.level)).all()
    assert {lvl: (vmin, n) for lvl, vmin, n in mins} == {16: (-7.0, 100), 256: (-7.0, 100), 4096: (-7.0, 100)}


def test_rule_engine_gets_new_points_and_its_bugs_lose_nothing(sessions, caplog):
    seen = []

    class Rules:
        def observe(self, run_id, series, events):
            seen.append((run_id, {k: list(v) for k, v in series.items()}, events))
            raise RuntimeError("bug in a rule")

    c = Collector(sessions, rules=Rules())
    b = batch(series={"loss": [[1, T0, math.nan]]}, events=[{"kind": "start", "time": T0}])
    assert not ingest(c, b).duplicate
    assert not ingest(c, batch(seq=1, series={"loss": [[2, T0, 1.0]]})).duplicate
    ingest(c, b)  # a replay is not observed again
    assert len(seen) == 2
    run_id, series, events = seen[0]
    assert math.isnan(series["loss"][0][2]) and series["loss"][0][:2] == (1, T0)
    assert events[0]["kind"] == "start"
    assert [r for r in caplog.records if "rule engine failed" in r.getMessage()].__len__() == 1  # logged once
    assert [s for s, _ in points_of(sessions, "r", "loss")] == [1, 2]


def test_two_collectors_racing_on_postgresql_store_each_point_once(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine)
    collectors = [Collector(session_factory(make_engine(pg_url, pool_size=4))) for _ in range(2)]
    # both collectors get the first batches of the same new runs at once (project, run and series rows
    # are created concurrently), and every batch twice
    errors = []

    def send(c: Collector, run: str, seqs):
        try:
            for seq in seqs:
                ingest(c, batch(run=run, seq=seq, series=steps("loss", seq * 10, seq * 10 + 10)
                                | steps("grad_norm/w", seq * 10, seq * 10 + 10)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(c, f"run{k}", range(8))) for k in range(3) for c in collectors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 3
        assert s.scalar(select(func.count()).select_from(Series)) == 6
        assert s.scalar(select(func.count()).select_from(Point)) == 3 * 2 * 80
        assert set(s.scalars(select(Series.points))) == {80}
    for c in collectors:
        c.engine.dispose()
    engine.dispose()


def _concurrently(c: Collector, bodies: list[dict], workers: int = 16) -> list:
    """Ingest ``bodies`` from ``workers`` threads released together; the results in the order of ``bodies``."""
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Barrier(workers)

    def send(b):
        try:
            gate.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        return ingest(c, b)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(send, bodies))


def test_concurrent_batches_are_written_together_each_caller_told_its_own_result(sessions):
    from sqlalchemy import event

    c = Collector(sessions)
    claims = []
    event.listen(c.engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: claims.append(1) if stmt.startswith("INSERT INTO batches") else None)
    # 16 runs, 3 batches each, sent at once; one run also sends a replay of its first batch
    bodies = [batch(run=f"run{k}", seq=seq, series=steps("loss", seq * 10, seq * 10 + 10)
                    | steps("grad_norm/layers.0.weight", seq * 10, seq * 10 + 10))
              for seq in range(3) for k in range(16)]
    results = _concurrently(c, bodies + [bodies[0]])
    assert [(r.duplicate, r.points) for r in results[:-1]] == [(False, 20)] * 48
    assert (results[-1].duplicate, results[-1].points) == (True, 0)
    assert len(claims) < 48  # batches that arrived while another was being written shared its transaction
    for k in range(16):
        assert points_of(sessions, f"run{k}", "loss") == [(s, 1.0 / (s + 1)) for s in range(30)]
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Point)) == 16 * 2 * 30
        assert set(s.scalars(select(Series.points))) == {30}
        assert set(s.scalars(select(Run.steps))) == {29}


def test_a_batch_that_cannot_be_stored_fails_alone(sessions, monkeypatch, caplog):
    caplog.set_level("INFO", logger="txwatch.ingest.queue")
    c = Collector(sessions)
    run_changes = plan.run_changes

    def fail_for_run_bad(run, b, now, max_step):  # late in the transaction, on either write path
        if b.run == "bad":
            raise RuntimeError("the database refused run 'bad'")
        return run_changes(run, b, now, max_step)

    monkeypatch.setattr(plan, "run_changes", fail_for_run_bad)
    bodies = [batch(run=f"good{k}", series=steps("loss", 0, 5)) for k in range(12)]
    bodies.insert(5, batch(run="bad", series=steps("loss", 0, 5)))
    results = []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(13) as pool:
        with c._turn:  # a write in progress: all 13 queue behind it and are then written as one group
            futures = [pool.submit(ingest, c, b) for b in bodies]
            while len(c._queue) < 13:
                time.sleep(0.01)
        for f in futures:
            try:
                results.append(f.result().points)
            except RuntimeError as exc:
                results.append(str(exc))
    assert results == [5] * 5 + ["the database refused run 'bad'"] + [5] * 7
    assert "storing 13 batches together failed" in caplog.text
    assert all(len(points_of(sessions, f"good{k}", "loss")) == 5 for k in range(12))
    with sessions() as s:  # nothing of the refused batch was kept, so the hooks' retry can store it
        assert s.scalar(select(func.count()).select_from(Run).where(Run.name == "bad")) == 1
        assert s.scalar(select(func.count()).select_from(Series).join(Run).where(Run.name == "bad")) == 0
    monkeypatch.undo()
    assert ingest(c, bodies[5]).points == 5
