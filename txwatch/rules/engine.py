"""The rule engine as the collector uses it: incremental evaluation with state and diagnoses in the database.

``observe()`` runs one transaction per batch: lock the run's ``engine_state`` row, reuse the cached state when
its version is current (else load what another collector saved), evaluate the new points, write diagnoses and
notifications, save the state with the version bumped. ``check_time()`` evaluates the time-based rules
(run-stalled) for the scheduler.
"""

from __future__ import annotations

import logging
import threading
import time as _time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from txwatch import telemetry
from txwatch.rules.evaluator import Core, Transition
from txwatch.rules.detection import detect
from txwatch.rules.compiler import RunFacts
from txwatch.rules.loader import load_rules
from txwatch.rules.model import Rule
from txwatch.rules.persistence import (
    DiagnosisChange,
    apply_transitions,
    load_state_blob,
    load_states,
    lock_and_save_pipelined,
    lock_state_row,
    lock_state_rows,
    save_states,
)
from txwatch.rules.state import RunState
from txwatch.store.db import SessionFactory, bound_engine
from txwatch.store.models import RUN_LAYER_NONE, Diagnosis, Run, as_utc

log = logging.getLogger(__name__)

STATE_CACHE_RUNS = 512  # runs whose state stays in memory between batches; others reload from the database
LOCK_STRIPES = 64  # per-run serialization inside one process without a lock object per run
ERROR_LOG_INTERVAL_S = 60.0  # a failing run is logged at most this often
_WRITES_ROWS = frozenset({"fire", "update", "resolve"})  # transitions with a diagnoses row to write
OPTIMISTIC_TRIES = 2  # evaluations without the lock before one that holds it (conflicts need two collectors)
RUNNING_STATUSES = ("running", "stalled")  # statuses of a run that has not ended
# a run whose process died without a word (kill -9, the kernel's OOM killer) is "vanished": it never ended
# properly, so time-based rules keep watching it for this long after it was last heard from
VANISHED_WATCH_S = 7 * 24 * 3600.0


# one run's batch as the engine evaluates it: run id, its points by series, its events
_Item = tuple[int, dict[str, list[Any]], list[Any]]
_Prepared = tuple[_Item, RunState, list[Transition]]


class Notifier(Protocol):
    """What the engine tells of each diagnosis change, inside the change's transaction (the alerts outbox)."""

    def record(self, session: Session, diagnosis: Diagnosis, kind: str) -> object: ...


class EngineSettings(Protocol):
    """The settings ``build_engine`` reads (``txwatch.settings.Settings``)."""

    @property
    def rules_dirs(self) -> Iterable[Any]: ...
    @property
    def builtin_rules(self) -> bool: ...
    @property
    def stall_after_s(self) -> float: ...


class _Facts:
    """A View over run facts only (for the scheduler's time-based rules, which read no series)."""

    def __init__(self, facts: RunFacts):
        self.facts = facts

    def series(self, name: str) -> None:
        return None

    def layer_keys(self, patterns: tuple[str, ...], kinds: frozenset[str] | None = None) -> list[str]:
        return []


class RuleEngine:
    """Applies rules to runs as their batches arrive. Thread-safe; safe with several collectors on one database.

    Args:
        rules: the loaded rules (``load_rules``).
        session_factory: SQLAlchemy sessionmaker for the store.
        notifier: told of each fire/update/resolve inside the diagnosis' transaction (``record(session, row, kind)``).
        stall_after_s: read by conditions as ``setting("stall_after_s")``.
    """

    def __init__(
        self,
        rules: list[Rule],
        session_factory: SessionFactory,
        notifier: Notifier | None = None,
        stall_after_s: float = 300.0,
    ):
        self.rules = list(rules)
        self.session_factory = session_factory
        self.notifier = notifier
        self.settings = {"stall_after_s": float(stall_after_s)}
        self.core = Core(self.rules, self.settings)
        self._cache: OrderedDict[int, RunState] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._last_error_log: dict[int, float] = {}
        # on PostgreSQL a group's states are saved in two round trips when it writes no diagnosis
        self._pipelined = bound_engine(session_factory).dialect.name == "postgresql"

    # ------------------------------------------------------------ ingest

    def observe(
        self,
        run_id: int,
        series: Mapping[str, Iterable[Any]],
        events: Iterable[Mapping[str, Any]] = (),
    ) -> list[DiagnosisChange]:
        """Evaluate the rules on a run's new points and events; store and return the diagnosis changes.

        ``series``: metric name -> [(step, time, value)]; ``events``: the batch's events as dicts. Errors are
        logged and counted (``txwatch_rule_errors_total``), never raised: the batch is already stored.
        """
        event_list = list(events)
        points_of = {name: list(points) for name, points in series.items()}
        started = _time.perf_counter()
        with self._stripes[run_id % LOCK_STRIPES]:
            try:
                changes = self._observe(run_id, points_of, event_list)
            except Exception:
                self._forget(run_id)
                telemetry.RULE_ERRORS.labels(stage="observe").inc()
                self._log_error(run_id, "rule evaluation failed for run %s; its diagnoses may lag", run_id)
                return []
        _count(changes, sum(len(p) for p in points_of.values()), started)
        return changes

    def observe_many(
        self, items: Iterable[tuple[int, Mapping[str, Iterable[Any]], Iterable[Mapping[str, Any]]]]
    ) -> list[DiagnosisChange]:
        """``observe`` for several runs (one batch each) with one transaction for all of them.

        A run whose saved state moved meanwhile (another collector), or a group whose transaction fails, is
        evaluated again on its own through ``observe``.
        """
        group: list[_Item] = [
            (run_id, {n: list(p) for n, p in series.items()}, list(events)) for run_id, series, events in items
        ]
        if len(group) == 1:
            return self.observe(*group[0])
        started = _time.perf_counter()
        stripes = sorted({run_id % LOCK_STRIPES for run_id, _, _ in group})
        for k in stripes:
            self._stripes[k].acquire()
        try:
            changes, again = self._observe_group(group)
        finally:
            for k in reversed(stripes):
                self._stripes[k].release()
        redo = {id(item) for item in again}  # counted when ``observe`` evaluates them below
        _count(changes, sum(len(p) for item in group if id(item) not in redo for p in item[1].values()), started)
        for item in again:
            changes.extend(self.observe(*item))
        return changes

    def _observe_group(self, items: list[_Item]) -> tuple[list[DiagnosisChange], list[_Item]]:
        """Evaluate each run on its current state, then save all in one transaction. Returns the changes and
        the items to evaluate again one by one."""
        prepared: list[_Prepared] = []
        try:
            states = self._current_states([run_id for run_id, _, _ in items])
        except Exception:  # the database did not answer: evaluate one by one, each with its own errors
            return [], list(items)
        for item in items:
            run_id, series, events = item
            try:
                state = states[run_id]
                prepared.append((item, state, self.core.process(state, series, events)))
            except Exception:
                self._forget(run_id)
                telemetry.RULE_ERRORS.labels(stage="observe").inc()
                self._log_error(run_id, "rule evaluation failed for run %s; its diagnoses may lag", run_id)
        prepared.sort(key=lambda p: p[0][0])
        if self._pipelined and not any(t.kind in _WRITES_ROWS for _, _, transitions in prepared for t in transitions):
            return self._save_pipelined(prepared)
        changes: list[DiagnosisChange] = []
        again: list[_Item] = []
        saved: list[RunState] = []
        try:
            with self.session_factory() as session, session.begin():
                versions = lock_state_rows(session, [item[0] for item, _, _ in prepared],
                                           saved={item[0] for item, state, _ in prepared if state.version > 0})
                for item, state, transitions in prepared:
                    if versions[item[0]] != state.version:
                        again.append(item)  # another collector evaluated this run meanwhile: its state is newer
                        continue
                    changes.extend(apply_transitions(session, item[0], transitions, state, self.notifier))
                    saved.append(state)
                save_states(session, saved, versions)
        except Exception:
            return [], self._save_failed(prepared)
        self._settle(prepared, {state.run_id for state in saved})
        return changes, again

    def _save_pipelined(self, prepared: list[_Prepared]) -> tuple[list[DiagnosisChange], list[_Item]]:
        """``_observe_group``'s saving for a group whose transitions write no diagnosis row (the usual case:
        nothing fired, updated or resolved), in two round trips. Returns no changes, and the items whose
        state another collector moved meanwhile (to evaluate again)."""
        states = [state for _, state, _ in prepared]
        try:
            with bound_engine(self.session_factory).connect() as conn:
                kept = lock_and_save_pipelined(conn, states, saved={s.run_id for s in states if s.version > 0})
        except Exception:
            return [], self._save_failed(prepared)
        self._settle(prepared, kept)
        return [], [item for item, state, _ in prepared if state.run_id not in kept]

    def _save_failed(self, prepared: list[_Prepared]) -> list[_Item]:
        """Nothing was saved, but the states advanced in memory: drop them; the items, to evaluate one by one."""
        log.info("saving %d runs' rule states together failed; evaluating them one by one", len(prepared),
                 exc_info=True)
        for item, _, _ in prepared:
            self._forget(item[0])
        return [item for item, _, _ in prepared]

    def _settle(self, prepared: list[_Prepared], saved: set[int]) -> None:
        """Keep the saved states cached; drop the others (another collector moved them: evaluated again)."""
        for item, state, _ in prepared:
            if state.run_id in saved:
                self._remember(state)
            else:
                self._forget(item[0])
                telemetry.RULE_STATE_CONFLICTS.inc()

    def _observe(self, run_id: int, series: dict[str, list[Any]], events: list[Any]) -> list[DiagnosisChange]:
        # Optimistic first: evaluate without holding any database lock (on SQLite a write transaction blocks
        # every other writer), then lock the run's row, check nobody saved a newer state meanwhile, and write.
        # If another collector did, reload its state and evaluate again; the last try holds the lock throughout.
        for _ in range(OPTIMISTIC_TRIES):
            state = self._current_state(run_id)
            transitions = self.core.process(state, series, events)
            with self.session_factory() as session, session.begin():
                version = lock_state_row(session, run_id, saved=state.version > 0)
                if version == state.version:
                    changes = apply_transitions(session, run_id, transitions, state, self.notifier)
                    save_states(session, [state], {run_id: version})
                    self._remember(state)
                    return changes
            self._forget(run_id)  # another collector evaluated this run meanwhile: its state is newer
            telemetry.RULE_STATE_CONFLICTS.inc()
        with self.session_factory() as session, session.begin():
            version = lock_state_row(session, run_id)
            cached = self._cached(run_id, version)
            if cached is None:
                state = RunState.from_state(run_id, self.core.index, load_state_blob(session, run_id))
                state.version = version
            else:
                state = cached
            transitions = self.core.process(state, series, events)
            changes = apply_transitions(session, run_id, transitions, state, self.notifier)
            save_states(session, [state], {run_id: version})
        self._remember(state)
        return changes

    def _current_state(self, run_id: int) -> RunState:
        """The run's state as last saved: the cached one (its version is checked when saving), else the
        database's."""
        return self._current_states([run_id])[run_id]

    def _current_states(self, run_ids: list[int]) -> dict[int, RunState]:
        """``_current_state`` of several runs, with one query for all those not cached (a group of new runs,
        or every run after a restart)."""
        out: dict[int, RunState] = {}
        with self._cache_lock:
            for run_id in run_ids:
                cached = self._cache.get(run_id)
                if cached is not None:
                    out[run_id] = cached
        missing = sorted({run_id for run_id in run_ids if run_id not in out})
        if not missing:
            return out
        saved = load_states(bound_engine(self.session_factory), missing)
        for run_id in missing:
            version, blob = saved.get(run_id, (0, None))  # a new run has no saved state
            state = self._cached(run_id, version)
            if state is None:
                state = RunState.from_state(run_id, self.core.index, blob)
                state.version = version
            out[run_id] = state
        return out

    # ------------------------------------------------------------ scheduler

    def check_time(self, now: float | None = None) -> list[DiagnosisChange]:
        """Evaluate the time-based rules (run-stalled) against every live run; called by the scheduler."""
        time_rules = self.core.time_rules
        if not time_rules:
            return []
        now = _time.time() if now is None else float(now)
        ids = [r.id for r in time_rules]
        try:
            with self.session_factory() as session:
                recent = datetime.fromtimestamp(now - VANISHED_WATCH_S, timezone.utc)
                live = session.execute(
                    select(Run.id, Run.status, Run.last_seen, Run.end_reason).where(
                        Run.status.in_(RUNNING_STATUSES) | ((Run.status == "vanished") & (Run.last_seen >= recent))
                    )
                ).all()
                open_rows = session.execute(
                    select(Diagnosis.run_id, Diagnosis.rule_id).where(
                        Diagnosis.state == "firing", Diagnosis.rule_id.in_(ids)
                    )
                ).all()
                open_set = {(r.run_id, r.rule_id) for r in open_rows}
                candidates = {r.id: r for r in live}
                missing = {rid for rid, _ in open_set} - set(candidates)
                if missing:
                    for r in session.execute(
                        select(Run.id, Run.status, Run.last_seen, Run.end_reason).where(Run.id.in_(missing))
                    ).all():
                        candidates[r.id] = r
        except Exception:
            telemetry.RULE_ERRORS.labels(stage="check_time").inc()
            log.exception("time-based rule check failed")
            return []

        changes: list[DiagnosisChange] = []
        for run in candidates.values():
            facts = _facts_of(run, now)
            for rule in time_rules:
                det = detect(rule, _Facts(facts), 0, self.settings, {}, explain=False)
                is_open = (run.id, rule.id) in open_set
                if (det.fired is True) == is_open:
                    continue
                try:
                    changes.extend(self._time_transition(run.id, rule, facts, det.fired is True, now))
                except Exception:
                    telemetry.RULE_ERRORS.labels(stage="check_time").inc()
                    self._log_error(run.id, "time-based rule %s failed for run %s", rule.id, run.id)
        _count(changes)
        return changes

    def _time_transition(self, run_id: int, rule: Rule, facts: RunFacts, fire: bool, now: float) -> list[DiagnosisChange]:
        with self._stripes[run_id % LOCK_STRIPES]:
            with self.session_factory() as session, session.begin():
                lock_state_row(session, run_id)  # take turns with observe() and other collectors
                is_open = (
                    session.execute(
                        select(Diagnosis.id).where(
                            Diagnosis.run_id == run_id,
                            Diagnosis.rule_id == rule.id,
                            Diagnosis.layer == RUN_LAYER_NONE,
                            Diagnosis.state == "firing",
                        )
                    ).first()
                    is not None
                )
                if fire == is_open:
                    return []  # another collector got there first
                row = session.get(Run, run_id)
                step = int(row.steps or 0) if row is not None else 0
                full = detect(rule, _Facts(facts), step, self.settings, {}, explain=True)
                kind = "fire" if fire else "resolve"
                reason = full.reason if fire else f"no longer holds: {rule.condition} is false"
                tr = Transition(kind, rule, None, step, now, 0, reason, full.evidence)
                return apply_transitions(session, run_id, [tr], None, self.notifier)

    def close(self) -> None:
        """Drop the cached run states (the saved ones stay in the database for the next start)."""
        with self._cache_lock:
            self._cache.clear()

    # ------------------------------------------------------------ cache

    def _cached(self, run_id: int, version: int) -> RunState | None:
        with self._cache_lock:
            state = self._cache.get(run_id)
            if state is None or state.version != version:
                return None
            self._cache.move_to_end(run_id)
            return state

    def _remember(self, state: RunState) -> None:
        with self._cache_lock:
            self._cache[state.run_id] = state
            self._cache.move_to_end(state.run_id)
            while len(self._cache) > STATE_CACHE_RUNS:
                self._cache.popitem(last=False)

    def _forget(self, run_id: int) -> None:
        with self._cache_lock:
            self._cache.pop(run_id, None)

    def _log_error(self, run_id: int, msg: str, *args: Any) -> None:
        now = _time.monotonic()
        last = self._last_error_log.get(run_id)
        if last is None or now - last > ERROR_LOG_INTERVAL_S:
            self._last_error_log[run_id] = now
            log.exception(msg, *args)


def _count(changes: list[DiagnosisChange], points: int = 0, started: float | None = None) -> None:
    """The engine's own metrics for one evaluation: its time (from ``started``), points, diagnosis changes."""
    if started is not None:
        telemetry.RULE_BATCH_SECONDS.observe(_time.perf_counter() - started)
    if points:
        telemetry.RULE_POINTS.inc(points)
    for c in changes:
        telemetry.RULE_DIAGNOSES.labels(rule=c.rule_id, kind=c.kind).inc()


def _facts_of(run: Any, now: float) -> RunFacts:
    last_seen: datetime = as_utc(run.last_seen) or run.last_seen  # a plain row (load_states) is not typed
    if run.status in RUNNING_STATUSES:
        status = "running"
    elif run.status == "vanished":
        status = "vanished"  # neither running nor ended: the process is gone without a word
    else:
        status = run.end_reason or run.status
    return RunFacts(status=status, idle_s=max(0.0, now - last_seen.timestamp()))


def build_engine(
    settings: EngineSettings, session_factory: SessionFactory, notifier: Notifier | None = None
) -> RuleEngine:
    """The engine for a collector: built-in rules (unless ``settings.builtin_rules`` is false) plus
    ``settings.rules_dirs``. Raises ``RuleError`` (file, line, problem) when a rule file is invalid."""
    rules = load_rules(list(settings.rules_dirs), builtin=settings.builtin_rules)
    return RuleEngine(rules, session_factory, notifier=notifier, stall_after_s=settings.stall_after_s)
