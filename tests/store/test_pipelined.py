"""The pipelined PostgreSQL write path stores exactly what the classic path stores: it is only a transport."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select, text

from tests.collector.batches import T0, batch, steps
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store import pipelined
from txwatch.store.db import make_engine, session_factory, upgrade
from txwatch.store.models import Point, Rollup, Run, Series

pytestmark = pytest.mark.postgres


@pytest.fixture
def sessions(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def pipelined_calls(monkeypatch):
    """What ``PipelineWriter.store`` answered, call by call (None: it left the group to the row writer)."""
    calls = []
    real = pipelined.PipelineWriter.store

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(pipelined.PipelineWriter, "store", spy)
    return calls


def _run_history(run: str) -> list[dict]:
    """A run's batches: new series, NaN and infinities, config merged, client stats, a rewrite, a crash."""
    def wave(s: int) -> float:
        return math.nan if s == 13 else math.inf if s == 17 else 1.0 / (s + 1)

    return [
        batch(run, 0, series={**steps("loss", 0, 10), **steps("grad_norm/w", 0, 10)},
              events=[{"kind": "start", "time": T0, "step": 0}],
              run_info={"host": "gpu-1", "config": {"lr": 0.1}, "started": T0}),
        batch(run, 1, series={**steps("loss", 10, 20, wave), **steps("grad_norm/w", 10, 20)},
              client={"dropped": {"queue_full": 2}, "spooled": 0}),
        batch(run, 2, series=steps("loss", 20, 30), run_info={"config": {"batch_size": 32}}),
        batch(run, 3, series=steps("loss", 25, 35, lambda s: 2.0)),  # rewrites steps 25-29
        batch(run, 4, series=steps("loss", 35, 40),
              events=[{"kind": "end", "time": T0 + 40, "step": 39, "status": "crashed",
                       "error": {"type": "RuntimeError", "message": "boom"}, "memory": {"cpu": {"rss": 123}}}]),
    ]


def _stored(sessions, run: str) -> dict:
    with sessions() as s:
        r = s.execute(select(Run).where(Run.name == run)).scalar_one()
        series = {x.name: x for x in s.execute(select(Series).where(Series.run_id == r.id)).scalars()}
        out = {
            "run": {k: getattr(r, k) for k in ("status", "steps", "config", "info", "host", "started", "ended",
                                               "end_reason", "error_type", "error_message", "end_memory",
                                               "client_stats")},
            "series": {n: (x.points, x.last_step, x.last_value, x.last_time) for n, x in series.items()},
        }
        for name, x in series.items():
            pts = s.execute(select(Point.step, Point.time, Point.value).where(Point.series_id == x.id)
                            .order_by(Point.step)).all()
            out[f"points {name}"] = [tuple(p) for p in pts]
            rolls = s.execute(select(Rollup).where(Rollup.series_id == x.id)
                              .order_by(Rollup.level, Rollup.block)).scalars()
            out[f"rollups {name}"] = [
                tuple(getattr(row, c) for c in row.__table__.columns.keys() if c != "series_id") for row in rolls
            ]
    return out


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_a_run_stored_pipelined_equals_the_same_run_stored_the_classic_way(sessions, pipelined_calls):
    c = Collector(sessions)
    for b in _run_history("piped"):
        c.ingest(Batch.model_validate(b))
    # every batch went pipelined (the first creating the run and its series) but the rewrite, handed back
    assert [call is not None for call in pipelined_calls] == [True, True, True, False, True]

    classic = Collector(sessions)
    classic.writer.executors = [classic.writer.rows]  # new runs too are created the classic way, for this comparison
    for b in _run_history("classic"):
        classic.ingest(Batch.model_validate(b))

    piped, expected = _stored(sessions, "piped"), _stored(sessions, "classic")
    assert piped.keys() == expected.keys()
    for key in expected:
        assert _same(piped[key], expected[key]), (key, piped[key], expected[key])
    assert piped["run"]["config"] == {"lr": 0.1, "batch_size": 32}
    assert piped["run"]["status"] == "crashed" and piped["run"]["error_message"] == "boom"
    assert [v for s, _, v in piped["points loss"] if 25 <= s < 30] == [2.0] * 5  # the rewrite won


def test_a_replayed_batch_is_a_duplicate_on_the_pipelined_path_too(sessions, pipelined_calls):
    c = Collector(sessions)
    first = [batch("r", 0, series=steps("loss", 0, 10)), batch("r", 1, series=steps("loss", 10, 20))]
    for b in first:
        c.ingest(Batch.model_validate(b))
    again = c.ingest(Batch.model_validate(first[1]))
    assert again.duplicate and again.points == 0
    assert pipelined_calls[-1] is not None and pipelined_calls[-1][1] == []  # claimed nothing, wrote nothing
    with sessions() as s:
        assert s.scalar(select(Series.points).where(Series.name == "loss")) == 20


def test_a_run_deleted_under_the_collector_is_recreated_on_retry(sessions, pipelined_calls):
    c = Collector(sessions)
    for seq in range(2):
        c.ingest(Batch.model_validate(batch("r", seq, series=steps("loss", 10 * seq, 10 * seq + 10))))
    with sessions() as s, s.begin():
        s.execute(text("DELETE FROM runs"))  # e.g. an operator's clean-up; the collector still caches the ids
    result = c.ingest(Batch.model_validate(batch("r", 2, series=steps("loss", 20, 30))))
    assert result.accepted and not result.duplicate and result.points == 10
    with sessions() as s:
        assert s.scalar(select(Series.points).where(Series.name == "loss")) == 10
