"""The collector core: takes validated batches, stores them, hands new points to the rule engine.

The same object runs behind the HTTP API (``txwatch serve``) and in-process (embedded mode).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.exc import IntegrityError, OperationalError

from txwatch import telemetry
from txwatch.store.db import SessionFactory, bound_engine, disk_full, disk_full_text
from txwatch.store.ingest import BatchWriter
from txwatch.store.plan import now_utc
from txwatch.wire.batch import Batch

log = logging.getLogger(__name__)

# Series ids cached per process (run id, name) -> id. Bounded: a collector that has seen more series than
# this starts over (a cache miss costs one SELECT).
SERIES_CACHE_MAX = 500_000
RUN_CACHE_MAX = 50_000
# A transaction that lost a race (PostgreSQL deadlock or serialization failure, SQLite busy past its
# timeout) is retried this many times before the batch is refused with a 503-worthy error.
RETRIES = 3


# /readyz reports a failed write this long at most: readiness cannot probe for free space itself, and a collector
# out of service would otherwise get no batch to find out that space was freed.
WRITE_PROBLEM_HOLD_S = 60.0

# Limits of one combined write (see Collector.ingest): enough to amortize a transaction over many small
# batches, small enough that the first caller in a group does not wait long for the others.
GROUP_MAX_BATCHES = 64
GROUP_MAX_POINTS = 200_000


# What the rule engine is told of one stored batch: run id, its new points by series, its events as dicts.
Observation = tuple[int, Mapping[str, Sequence[Any]], list[dict[str, Any]]]


class RuleObserver(Protocol):
    """What the collector needs of a rule engine: to be told of a run's stored points and events. Its result is
    not read; it must not raise (a raise is logged once per kind and counted, and loses nothing)."""

    def observe(self, run_id: int, series: Mapping[str, Sequence[Any]], events: list[dict[str, Any]]) -> object: ...


@runtime_checkable
class GroupObserver(RuleObserver, Protocol):
    """A rule engine that takes a group of stored batches at once (``RuleEngine``), in the order given."""

    def observe_many(self, items: list[Observation]) -> object: ...


class IngestBusy(Exception):
    """More batches are waiting to be stored than ``max_queue``: the caller should come back later (429)."""


class IngestTimeout(Exception):
    """The batch was not stored within the caller's ``timeout_s`` (the database is slow or not answering).

    It may still be stored later; sent again, it is recognised as a duplicate."""


@dataclass(frozen=True)
class IngestResult:
    """What happened to one batch: stored (``accepted``), or recognised as a replay (``duplicate``)."""

    accepted: bool
    duplicate: bool
    points: int


class _Pending:
    """One caller's batch waiting for its turn in ``Collector.ingest``."""

    __slots__ = ("batch", "run_id", "result", "error", "taken", "done")

    def __init__(self, batch: Batch):
        self.batch = batch
        self.run_id: int = 0
        self.result: IngestResult | None = None
        self.error: BaseException | None = None
        self.taken = False  # in a group (set under the queue lock)
        self.done = threading.Event()  # stored and evaluated (or failed)


class Collector:
    """Stores batches idempotently on (run, rank, seq) and feeds the rule engine.

    Args:
        session_factory: a SQLAlchemy ``sessionmaker`` bound to a migrated database (``SessionFactory``).
        rules: an optional rule engine (``RuleObserver``, or ``GroupObserver``); a failure there is logged
            (once per kind of failure) and never loses the stored batch.
    """

    def __init__(
        self, session_factory: SessionFactory, rules: RuleObserver | None = None, max_queue: int | None = None
    ):
        self.session_factory = session_factory
        self.rules = rules
        self.max_queue = max_queue  # batches waiting for their turn, at most; None: unbounded (embedded mode)
        self._write_problem: tuple[float, str] | None = None  # (when, why) the last batch could not be written
        engine = bound_engine(session_factory)
        self.engine = engine
        self.writer = BatchWriter(engine.dialect.name)
        # SQLite has one writer at a time; queueing writers on a lock here avoids SQLite's busy-wait sleeps
        # (1 to 100 ms each), which would dominate ingest latency with many concurrent clients.
        self._write_lock: contextlib.AbstractContextManager[Any] = threading.Lock() if self.writer.dialect == "sqlite" else contextlib.nullcontext()
        self._cache_lock = threading.Lock()
        self._runs: dict[tuple[str, str], int] = {}
        self._series: dict[int, dict[str, int]] = {}
        self._series_count = 0
        self._rule_errors: set[str] = set()
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._turn = threading.Lock()  # held by the thread writing a group
        self._evaluating = threading.Lock()  # held by the thread running a group's rules

    def ingest(self, batch: Batch, timeout_s: float | None = None) -> IngestResult:
        """Store one batch and run the rules on it; a batch already stored is acknowledged as a duplicate.

        Concurrent callers are combined: while one thread writes, the batches that arrive queue up, and the
        next thread to take the turn writes up to ``GROUP_MAX_BATCHES`` of them (one per run) in a single
        transaction, then runs their rules together while the next group is being written. Under load this
        keeps the cost per batch falling instead of the queue growing. Each caller returns when its own batch
        is stored and evaluated.

        Raises the database's error when the database is unreachable or keeps failing (after retries),
        ``IngestBusy`` when ``max_queue`` batches are already waiting, and ``IngestTimeout`` when the batch is
        not stored and evaluated within ``timeout_s`` (a batch not yet taken up is then withdrawn).
        """
        started = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        item = _Pending(batch)
        with self._queue_lock:
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                raise IngestBusy(f"{len(self._queue)} batches are waiting to be stored")
            self._queue.append(item)
        while not item.taken:
            if not self._turn.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
                self._give_up(item, timeout_s)
            if item.taken:
                self._turn.release()
                break
            self._process(self._take_group())
        if not item.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            self._give_up(item, timeout_s)
        if item.error is not None:
            if disk_full(item.error):
                self._write_problem = (time.monotonic(), disk_full_text(self.engine))
            raise item.error
        self._write_problem = None
        assert item.result is not None  # done, and no error: stored or a duplicate
        # arg-type: telemetry.IngestResult declares settable attributes; a frozen result only reads as one
        telemetry.observe_ingest(item.result, time.perf_counter() - started)  # type: ignore[arg-type]
        return item.result

    @property
    def write_problem(self) -> str | None:
        """Why the last batch could not be written (a full disk), for ``/readyz``; None once one was written, or
        after ``WRITE_PROBLEM_HOLD_S`` (so a replica taken out of service for it gets batches to try again)."""
        problem = self._write_problem
        if problem is None or time.monotonic() - problem[0] > WRITE_PROBLEM_HOLD_S:
            return None
        return problem[1]

    def _give_up(self, item: _Pending, timeout_s: float | None) -> None:
        with self._queue_lock:
            if not item.taken:
                self._queue.remove(item)
        raise IngestTimeout(f"the database did not store the batch within {timeout_s:g} s")

    def _take_group(self) -> list[_Pending]:
        """The oldest queued batches, one per run, within the group limits (at least one)."""
        group: list[_Pending] = []
        seen: set[tuple[str, str]] = set()
        points = 0
        with self._queue_lock:
            rest = []
            for item in self._queue:
                key = (item.batch.project, item.batch.run)
                n = item.batch.point_count()
                if key in seen or (group and (len(group) >= GROUP_MAX_BATCHES or points + n > GROUP_MAX_POINTS)):
                    rest.append(item)
                    continue
                seen.add(key)
                points += n
                item.taken = True
                group.append(item)
            self._queue = rest
        return group

    def _process(self, group: list[_Pending]) -> None:
        """Store ``group`` (one transaction; batch by batch if that fails), then evaluate the stored ones.

        Called holding ``_turn``, which it hands on as soon as the group is stored: the next group is written
        while this one's rules run. Groups are evaluated in the order they were stored (``_evaluating`` is
        taken before ``_turn`` is released), so a run's batches reach the rule engine in order.
        """
        try:
            self._store_or_split(group)
        finally:
            self._evaluating.acquire()
            self._turn.release()
        try:
            stored = [item for item in group
                      if item.error is None and item.result is not None and not item.result.duplicate]
            if stored and self.rules is not None:
                self._observe(stored)
        finally:
            self._evaluating.release()
            for item in group:
                if item.result is None and item.error is None:  # the writing thread was interrupted
                    item.error = RuntimeError("the batch was not stored: the collector was interrupted")
                item.done.set()

    def _store_or_split(self, group: list[_Pending]) -> None:
        try:
            self._store_group(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            log.info("storing %d batches together failed (%s); storing them one by one",
                     len(group), exc.__class__.__name__)
            for item in group:
                try:
                    self._store_group([item])
                except Exception as one_exc:
                    item.error = one_exc

    def _store_group(self, group: list[_Pending]) -> None:
        for attempt in range(RETRIES + 1):
            try:
                self._store_once(group)
                return
            except (IntegrityError, OperationalError) as exc:
                if attempt == RETRIES or not _retryable(exc):
                    raise
                log.info("retrying %d batch(es) after %s", len(group), exc.__class__.__name__)
                for item in group:
                    self._forget(item.batch)

    def _store_once(self, group: list[_Pending]) -> None:
        now = now_utc()
        with self._write_lock:
            ids = self._run_ids([item.batch for item in group], now)
            for item in group:
                item.run_id = ids[(item.batch.project, item.batch.run)]
            with self.engine.connect() as conn:
                known = [(item.run_id, item.batch, self._series.get(item.run_id, {})) for item in group]
                claimed, written = self.writer.store(conn, known, now)
        new = [item for item in group if (item.run_id, item.batch.rank, item.batch.seq) in claimed]
        done = {id(item): w for item, w in zip(new, written)}
        for item in group:
            w = done.get(id(item))
            if w is None:
                item.result = IngestResult(accepted=True, duplicate=True, points=0)
            else:
                self._remember_series(item.run_id, w.series_ids)
                item.result = IngestResult(accepted=True, duplicate=False, points=w.points)

    def _run_ids(self, batches: list[Batch], now: datetime) -> dict[tuple[str, str], int]:
        """(project, run) -> run id for the batches' runs: cached, or created (all new ones in one transaction)."""
        ids: dict[tuple[str, str], int] = {}
        new = []
        for b in batches:
            key = (b.project, b.run)
            run_id = self._runs.get(key)
            if run_id is None:
                new.append(b)
            else:
                ids[key] = run_id
        if new:
            with self.engine.connect() as conn:
                created = self.writer.ensure_runs(conn, new, now)
            with self._cache_lock:
                if len(self._runs) + len(created) > RUN_CACHE_MAX:
                    self._runs.clear()
                self._runs.update(created)
            ids.update(created)
        return ids

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

    def _observe(self, stored: list[_Pending]) -> None:
        items: list[Observation] = [(item.run_id, item.batch.series, _rule_events(item.batch)) for item in stored]
        try:
            # On SQLite the rule engine's writes (diagnoses, engine state) would otherwise race ingest's for the
            # one write lock, and SQLite's busy handler sleeps up to 100 ms per retry; queue them here instead.
            with self._write_lock:
                if isinstance(self.rules, GroupObserver):
                    self.rules.observe_many(items)
                else:
                    for item in items:
                        self.rules.observe(*item)  # type: ignore[union-attr]  # None: _process calls no _observe
        except Exception as exc:  # a rule bug must not lose data: the batch is already committed
            kind = f"{exc.__class__.__name__}: {exc}"[:200]
            if kind not in self._rule_errors:
                self._rule_errors.add(kind)
                log.exception("rule engine failed on runs %s (logged once per kind; data was stored)",
                              sorted({i[0] for i in items}))
            telemetry.RULE_OBSERVE_FAILURES.inc()


def _retryable(exc: Exception) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    # IntegrityError: a row this process cached was deleted, or a racing collector won a unique key in a way
    # ON CONFLICT could not absorb; deadlocks and SQLite's "database is locked" are worth one more try.
    return isinstance(exc, IntegrityError) or any(
        s in msg for s in ("deadlock", "could not serialize", "database is locked", "busy")
    )


def _rule_events(batch: Batch) -> list[dict[str, Any]]:
    """The batch's events as the rules read them; its run info (parameter roles, config) goes first."""
    events = [e.model_dump() for e in batch.events]
    if batch.run_info is not None:
        events.insert(0, {"kind": "info", "info": batch.run_info.model_dump()})
    return events
