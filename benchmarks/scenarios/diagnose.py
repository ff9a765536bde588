"""Feed a recorded run to a fresh collector with the built-in rules and read back its diagnoses.

The path is the one a deployment takes: each batch the hooks sent is validated (``Batch.model_validate``)
and ingested by ``Collector`` into an empty SQLite database, with ``build_engine(Settings(), sessions)``
evaluating the built-in rules as it goes. Then the scheduler's time check (``RuleEngine.check_time``, where
``run-stalled`` lives) is run once as if ``stall_after_s`` plus a second had passed since the run was last
heard from: a run that ended says so and stays quiet, a run that vanished is diagnosed stalled.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select

from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.rules import build_engine
from txwatch.settings import Settings
from txwatch.store.db import make_engine, session_factory, upgrade
from txwatch.store.models import Diagnosis, Run

LOUD = ("warning", "critical")


@dataclass(frozen=True)
class Found:
    """One diagnosis episode, as stored."""

    rule: str
    layer: str
    episode: int
    severity: str
    first_step: int
    resolved_step: int | None
    state: str
    reason: str

    @property
    def loud(self) -> bool:
        return self.severity in LOUD


def diagnose(batches: list[dict[str, Any]], settings: Settings | None = None) -> list[Found]:
    """Every diagnosis episode the built-in rules store for ``batches``, in the order they began."""
    settings = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="txwatch-bench-db-") as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'txwatch.db'}")
        try:
            upgrade(engine)
            sessions = session_factory(engine)
            rules = build_engine(settings, sessions)
            collector = Collector(sessions, rules=rules)
            for body in batches:
                collector.ingest(Batch.model_validate(body))
            with sessions() as s:
                last_seen = s.execute(select(Run.last_seen)).scalar()
            if last_seen is not None:
                if last_seen.tzinfo is None:
                    last_seen = last_seen.replace(tzinfo=timezone.utc)
                rules.check_time((last_seen + timedelta(seconds=settings.stall_after_s + 1)).timestamp())
            with sessions() as s:
                rows = s.execute(select(Diagnosis).order_by(Diagnosis.first_step, Diagnosis.id)).scalars().all()
                return [Found(d.rule_id, d.layer, d.episode, d.severity, int(d.first_step or 0), d.resolved_step,
                              d.state, d.reason) for d in rows]
        finally:
            engine.dispose()
