"""The collector core: takes validated batches, stores them, hands new points to the rule engine.

The same object runs behind the HTTP API (``txwatch serve``) and in-process (embedded mode).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from txwatch.collector.schema import Batch
from txwatch.store.ingest import BatchWriter, now_utc

log = logging.getLogger(__name__)

# Series ids cached per process (run id, name) -> id. Bounded: a collector that has seen more series than
# this starts over (a cache miss costs one SELECT).
SERIES_CACHE_MAX = 500_000
RUN_CACHE_MAX = 50_000
# A transaction that lost a race (PostgreSQL deadlock or serialization failure, SQLite busy past its
# timeout) is retried this many times before the batch is refused with a 503-worthy error.
RETRIES = 3


@dataclass(frozen=True)
class IngestResult:
    """What happened to one batch: stored (``accepted``), or recognised as a replay (``duplicate``)."""

    accepted: bool
    duplicate: bool
    points: int


class Collector:
    """Stores batches idempotently on (run, rank, seq) and feeds the rule engine.

    Args:
        session_factory: a SQLAlchemy ``sessionmaker`` bound to a migrated database.
        rules: an optional rule engine with ``observe(run_id, series, events)``; a failure there is logged
            (once per kind of failure) and never loses the stored batch.
    """

    def __init__(self, session_factory: sessionmaker[Session], rules: Any = None):
        self.session_factory = session_factory
        self.rules = rules
        engine = session_factory.kw["bind"]
        self.engine = engine
        self.writer = BatchWriter(engine.dialect.name)
        # SQLite has one writer at a time; queueing writers on a lock here avoids SQLite's busy-wait sleeps
        # (1 to 100 ms each), which would dominate ingest latency with many concurrent clients.
        self._write_lock = threading.Lock() if self.writer.dialect == "sqlite" else contextlib.nullcontext()
        self._cache_lock = threading.Lock()
        self._runs: dict[tuple[str, str], int] = {}
        self._series: dict[int, dict[str, int]] = {}
        self._series_count = 0
        self._rule_errors: set[str] = set()

    def ingest(self, batch: Batch) -> IngestResult:
        """Store one batch (one transaction); a batch already stored is acknowledged as a duplicate.

        Raises the database's error when the database is unreachable or keeps failing (after retries).
        """
        from txwatch import exporter

        started = time.perf_counter()
        for attempt in range(RETRIES + 1):
            try:
                result, run_id = self._ingest_once(batch)
                break
            except (IntegrityError, OperationalError) as exc:
                if attempt == RETRIES or not _retryable(exc):
                    raise
                log.info("retrying batch %s/%s seq %s after %s", batch.project, batch.run, batch.seq,
                         exc.__class__.__name__)
                self._forget(batch)
        exporter.observe_ingest(result, time.perf_counter() - started)
        if result.duplicate or self.rules is None:
            return result
        self._observe(run_id, batch)
        return result

    def _ingest_once(self, batch: Batch) -> tuple[IngestResult, int]:
        now = now_utc()
        with self._write_lock:
            run_id = self._run_id(batch, now)
            with self.engine.begin() as conn:
                if not self.writer.claim(conn, run_id, batch, now):
                    return IngestResult(accepted=True, duplicate=True, points=0), run_id
                known = self._series.get(run_id, {})
                written = self.writer.write(conn, run_id, batch, known, now)
        self._remember_series(run_id, written.series_ids)
        return IngestResult(accepted=True, duplicate=False, points=written.points), run_id

    def _run_id(self, batch: Batch, now) -> int:
        key = (batch.project, batch.run)
        run_id = self._runs.get(key)
        if run_id is not None:
            return run_id
        with self.engine.begin() as conn:
            run_id = self.writer.ensure_run(conn, batch, now)
        with self._cache_lock:
            if len(self._runs) >= RUN_CACHE_MAX:
                self._runs.clear()
            self._runs[key] = run_id
        return run_id

    def _remember_series(self, run_id: int, ids: dict[str, int]) -> None:
        known = self._series.get(run_id)
        if known is not None and len(known) == len(ids) and all(n in known for n in ids):
            return
        with self._cache_lock:
            if self._series_count + len(ids) > SERIES_CACHE_MAX:
                self._series.clear()
                self._series_count = 0
            known = self._series.setdefault(run_id, {})
            before = len(known)
            known.update(ids)
            self._series_count += len(known) - before

    def _forget(self, batch: Batch) -> None:
        """Drop cached ids for this run: after a failed transaction they may name rows that do not exist."""
        with self._cache_lock:
            run_id = self._runs.pop((batch.project, batch.run), None)
            if run_id is not None:
                self._series_count -= len(self._series.pop(run_id, {}))

    def _observe(self, run_id: int, batch: Batch) -> None:
        try:
            # On SQLite the rule engine's writes (diagnoses, engine state) would otherwise race ingest's for the
            # one write lock, and SQLite's busy handler sleeps up to 100 ms per retry; queue them here instead.
            with self._write_lock:
                self.rules.observe(run_id, batch.series, [e.model_dump() for e in batch.events])
        except Exception as exc:  # a rule bug must not lose data: the batch is already committed
            kind = f"{exc.__class__.__name__}: {exc}"[:200]
            if kind not in self._rule_errors:
                self._rule_errors.add(kind)
                log.exception("rule engine failed on run %s (logged once per kind; data was stored)", run_id)
            from txwatch import exporter

            exporter.RULE_ERRORS.inc()


def _retryable(exc: Exception) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    # IntegrityError: a row this process cached was deleted, or a racing collector won a unique key in a way
    # ON CONFLICT could not absorb; deadlocks and SQLite's "database is locked" are worth one more try.
    return isinstance(exc, IntegrityError) or any(
        s in msg for s in ("deadlock", "could not serialize", "database is locked", "busy")
    )
