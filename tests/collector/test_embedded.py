"""Embedded mode: the collector in the training process, on the default local database."""

from __future__ import annotations

import math

from sqlalchemy import func, select

from tests.collector.batches import T0, batch, steps
from txwatch.collector.embedded import open_embedded
from txwatch.store.db import default_db_path, make_engine, session_factory
from txwatch.store.models import Diagnosis, Point


def test_send_stores_on_the_default_database_and_close_releases_it():
    emb = open_embedded()
    try:
        assert emb.send(batch(series=steps("loss", 0, 10)), timeout_s=10) is True
        assert emb.send(batch(series=steps("loss", 0, 10)), timeout_s=10) is True  # a replay: stored once
        assert emb.send(batch(seq=1, run="bad/name"), timeout_s=10) is False
        assert emb.last_status == 422 and "run" in emb.last_error
    finally:
        emb.close()
    assert emb.send(batch(seq=2), timeout_s=1) is False  # closed
    assert default_db_path().exists()
    engine = make_engine(None)
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Point)) == 10
    engine.dispose()


def test_rules_run_in_process(db_url):
    emb = open_embedded(db_url)
    try:
        assert emb.send(batch(series={"loss": [[s, T0 + s, 2.0 if s < 20 else math.nan] for s in range(25)]}), 10)
        emb.flush()
    finally:
        emb.close()
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        assert "loss-nonfinite" in set(s.scalars(select(Diagnosis.rule_id)))
    engine.dispose()
