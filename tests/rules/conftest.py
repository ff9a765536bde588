"""Fixtures for rule-engine tests against real databases: a migrated store and a collector feeding an engine."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store.db import session_factory as make_session_factory

T0 = 1_764_393_000.0


@pytest.fixture
def sessions(store_engine):
    """A sessionmaker on the migrated SQLite or PostgreSQL database."""
    return make_session_factory(store_engine)


class Feeder:
    """Sends batches for one run through a real Collector, numbering them like the hooks do."""

    def __init__(self, collector: Collector, run: str = "run-1", project: str = "proj", rank: int = 0):
        self.collector = collector
        self.run = run
        self.project = project
        self.rank = rank
        self.seq = 0

    def send(self, series: dict | None = None, events: list | None = None):
        body = {
            "schema_version": 1,
            "run": self.run,
            "project": self.project,
            "seq": self.seq,
            "rank": self.rank,
            "series": series or {},
            "events": events or [],
        }
        self.seq += 1
        return self.collector.ingest(Batch.model_validate(body))

    def steps(self, start: int, stop: int, **fns) -> None:
        """One batch with name -> fn(step) for steps [start, stop)."""
        self.send({name: [[s, T0 + s, fn(s)] for s in range(start, stop)] for name, fn in fns.items()})


def nan_after(step: int, base: float = 2.0):
    return lambda s: math.nan if s >= step else base * math.exp(-s / 100) + 0.5


@pytest.fixture
def feeder_factory(sessions) -> Iterator:
    def make(engine, run: str = "run-1", project: str = "proj") -> Feeder:
        return Feeder(Collector(sessions, rules=engine), run=run, project=project)

    yield make
