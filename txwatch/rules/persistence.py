"""The rule engine's tables: ``engine_state`` (saved trackers, one row per run) and ``diagnoses``.

Evaluation of a run is serialized through its ``engine_state`` row: the first statement of every evaluation
inserts the row if missing and then locks it (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the insert
itself takes the database's write lock). Two collectors sharing one database therefore take turns per run, and
one that finds the row's ``version`` moved reloads the state the other saved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from txwatch.rules.evaluator import Transition
from txwatch.rules.state import RunState
from txwatch.store.codec import json_safe
from txwatch.store.models import RUN_LAYER_NONE, Diagnosis, EngineState
from txwatch.store.pipelined import transaction

log = logging.getLogger(__name__)


@dataclass
class DiagnosisChange:
    """A diagnosis that fired, updated or resolved (what ``RuleEngine.observe`` returns)."""

    kind: str  # fire | update | resolve
    run_id: int
    rule_id: str
    layer: str | None
    episode: int
    step: int
    severity: str
    state: str  # firing | resolved
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    diagnosis_id: int | None = None
    notified: bool = True


def utc(ts: float | None) -> datetime:
    if ts is None or not math.isfinite(ts):
        return datetime.now(timezone.utc)
    return datetime.fromtimestamp(ts, timezone.utc)


# engine_state statements on the table, built once: they run on every evaluation (each ingested group), and
# building them per call, or going through the ORM's bulk paths, cost more client CPU than executing them
_STATE = EngineState.__table__
_INSERT_STATE = {
    name: dialect.insert(_STATE).on_conflict_do_nothing(index_elements=["run_id"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_LOCK_VERSIONS = (
    select(_STATE.c.run_id, _STATE.c.version)
    .where(_STATE.c.run_id.in_(bindparam("ids", expanding=True)))
    .order_by(_STATE.c.run_id)
    .with_for_update()
)
_READ_STATES = select(_STATE.c.run_id, _STATE.c.version, _STATE.c.state).where(
    _STATE.c.run_id.in_(bindparam("ids", expanding=True)))
_READ_STATES_PG = "SELECT run_id, version, state FROM engine_state WHERE run_id = ANY(%b::int4[])"
_SAVE_STATE = (
    _STATE.update()
    .where(_STATE.c.run_id == bindparam("rid"))
    .values(state=bindparam("state"), version=bindparam("next_version"), updated=bindparam("now"))
)


def lock_state_row(session: Session, run_id: int, saved: bool = False) -> int:
    """Create the run's engine_state row if missing, lock it for this transaction, and return its version.

    ``saved``: the row is known to exist (a state of this run was saved); see ``lock_state_rows``.
    """
    return lock_state_rows(session, [run_id], {run_id} if saved else ())[run_id]


def lock_state_rows(session: Session, run_ids: list[int], saved: Iterable[int] = ()) -> dict[int, int]:
    """Create the runs' engine_state rows where missing and lock them in run id order: run id -> version.

    On PostgreSQL the rows of runs in ``saved`` (known to exist: rows go only with their run) are not inserted
    again, which saves a round trip per evaluation. SQLite always runs the insert: it is what takes the
    database's write lock at the start, so that the version read next cannot go stale before the save.
    """
    ids = sorted(set(run_ids))
    known = set(saved) if session.get_bind().dialect.name == "postgresql" else set()
    _insert_state_rows(session, [rid for rid in ids if rid not in known])
    versions = _lock_versions(session, ids)
    gone = [rid for rid in ids if rid not in versions]  # a row thought saved was not there after all
    if gone:
        _insert_state_rows(session, gone)
        versions.update(_lock_versions(session, gone))
    return versions


def _insert_state_rows(session: Session, run_ids: list[int]) -> None:
    if run_ids:
        now = datetime.now(timezone.utc)
        conn = session.connection()
        conn.execute(
            _INSERT_STATE[conn.dialect.name],
            [{"run_id": rid, "state": {}, "version": 0, "updated": now} for rid in run_ids],
        )


def _lock_versions(session: Session, run_ids: list[int]) -> dict[int, int]:
    rows = session.connection().execute(_LOCK_VERSIONS, {"ids": run_ids})
    return {int(rid): int(version) for rid, version in rows}


def load_states(engine: Any, run_ids: list[int]) -> dict[int, tuple[int, dict[str, Any]]]:
    """The saved (version, state) of those runs that have one. On PostgreSQL in one round trip (a session
    would spend three: BEGIN, the query, ROLLBACK), which a group of new runs, or a restarted collector's
    first groups, pay for every run."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, transaction(conn, "rule state read") as dbapi:
            cur = dbapi.cursor()
            cur.execute(_READ_STATES_PG, (sorted(run_ids),))
            dbapi.rollback()
            rows = cur.fetchall()
    else:
        with engine.connect() as conn:
            rows = conn.execute(_READ_STATES, {"ids": sorted(run_ids)}).all()
    return {int(rid): (int(version), blob) for rid, version, blob in rows}


def load_state_blob(session: Session, run_id: int) -> dict[str, Any] | None:
    return session.execute(select(EngineState.state).where(EngineState.run_id == run_id)).scalar_one_or_none()


def save_states(session: Session, states: list[RunState], versions: dict[int, int]) -> None:
    """Save the runs' states (``versions``: run id -> the version each was evaluated on, as locked) in one
    statement; each state's ``version`` becomes the saved one."""
    if not states:
        return
    now = datetime.now(timezone.utc)
    session.connection().execute(
        _SAVE_STATE,
        [{"rid": s.run_id, "state": s.to_state(), "next_version": versions[s.run_id] + 1, "now": now}
         for s in sorted(states, key=lambda s: s.run_id)],
    )
    for s in states:
        s.version = versions[s.run_id] + 1


# PostgreSQL, pipeline mode (see ``lock_and_save_pipelined``)
_LOCK_VERSIONS_PG = (
    "SELECT run_id, version FROM engine_state WHERE run_id = ANY(%b::int4[]) ORDER BY run_id FOR UPDATE"
)
_INSERT_STATES_PG = (
    "INSERT INTO engine_state (run_id, state, version, updated) "
    "SELECT r, '{}'::json, 0, %b::timestamptz FROM unnest(%b::int4[]) AS u(r) ON CONFLICT (run_id) DO NOTHING"
)
_SAVE_STATE_PG = "UPDATE engine_state SET state = %s, version = %s, updated = %s WHERE run_id = %s"


def lock_and_save_pipelined(conn: Connection, states: list[RunState], saved: Iterable[int] = ()) -> set[int]:
    """PostgreSQL: ``lock_state_rows`` and ``save_states`` in one transaction of two round trips (psycopg's
    pipeline mode), for an evaluation that writes no diagnosis. The rows of runs not in ``saved`` are created
    first; all are locked in run id order; each state whose row still holds the version it was evaluated on
    is saved (its ``version`` becomes the new one). Returns the run ids saved; the others were moved by
    another collector meanwhile. ``conn`` must not be in a transaction. Raises SQLAlchemy's ``DBAPIError``.

    The engine otherwise spends four round trips (BEGIN, lock, save, COMMIT) on each group it evaluates: with
    100 runs sending a batch a second, most of its time.
    """
    from psycopg.types.json import Json  # here: SQLite users never load psycopg

    ids = sorted(s.run_id for s in states)
    new = sorted(set(ids) - set(saved))
    now = datetime.now(timezone.utc)
    with transaction(conn, "pipelined rule state save") as dbapi:
        cur = dbapi.cursor()
        if new:
            cur.execute(_INSERT_STATES_PG, (now, new))
        lock = dbapi.cursor()
        lock.execute(_LOCK_VERSIONS_PG, (ids,))
        versions = {int(rid): int(version) for rid, version in lock.fetchall()}  # first round trip
        keep = [s for s in sorted(states, key=lambda s: s.run_id) if versions.get(s.run_id) == s.version]
        if keep:
            cur.executemany(_SAVE_STATE_PG, [(Json(s.to_state()), s.version + 1, now, s.run_id) for s in keep])
        dbapi.commit()  # second round trip
    for s in keep:
        s.version += 1
    return {s.run_id for s in keep}


def next_episode(session: Session, run_id: int, rule_id: str, layer: str) -> int:
    current = session.execute(
        select(func.max(Diagnosis.episode)).where(
            Diagnosis.run_id == run_id, Diagnosis.rule_id == rule_id, Diagnosis.layer == layer
        )
    ).scalar_one_or_none()
    return int(current or 0) + 1


def open_row(session: Session, run_id: int, rule_id: str, layer: str) -> Diagnosis | None:
    return session.execute(
        select(Diagnosis)
        .where(
            Diagnosis.run_id == run_id,
            Diagnosis.rule_id == rule_id,
            Diagnosis.layer == layer,
            Diagnosis.state == "firing",
        )
        .order_by(Diagnosis.episode.desc())
        .limit(1)
    ).scalar_one_or_none()


def apply_transitions(
    session: Session,
    run_id: int,
    transitions: list[Transition],
    state: RunState | None,
    notifier: Any,
) -> list[DiagnosisChange]:
    """Write the diagnoses rows for ``transitions`` and tell the notifier, in the caller's transaction."""
    changes: list[DiagnosisChange] = []
    for tr in transitions:
        if tr.kind not in ("fire", "update", "resolve", "end"):
            continue  # pending and cancelled live in the engine state only
        layer = tr.layer if tr.layer is not None else RUN_LAYER_NONE
        tracker = state.tracker(tr.rule.id, tr.layer) if state is not None else None
        row: Diagnosis | None
        when = utc(tr.time)
        evidence = json_safe(tr.evidence)
        if tr.kind == "fire":
            episode = max(next_episode(session, run_id, tr.rule.id, layer), tr.episode)
            row = Diagnosis(
                run_id=run_id,
                rule_id=tr.rule.id,
                layer=layer,
                episode=episode,
                state="firing",
                severity=tr.rule.severity,
                symptom=tr.rule.symptom,
                cause=tr.rule.cause,
                fix=list(tr.rule.fix),
                labels=dict(tr.rule.labels),
                evidence=evidence,
                reason=tr.reason,
                first_step=tr.step,
                last_step=tr.step,
                first_seen=when,
                last_seen=when,
            )
            session.add(row)
            session.flush()
            if tracker is not None:
                tracker.episode = episode
                tracker.diagnosis_id = row.id
        else:
            row = None
            if tracker is not None and tracker.diagnosis_id is not None:
                row = session.get(Diagnosis, tracker.diagnosis_id)
            if row is None or row.state != "firing":
                row = open_row(session, run_id, tr.rule.id, layer)
            if row is None:
                log.warning("diagnosis %s for run %s (layer %r) is gone; not updating it", tr.rule.id, run_id, layer)
                continue
            row.last_step = max(row.last_step or tr.step, tr.step)
            row.last_seen = when
            if tr.kind == "end":
                # the run ended while it was firing: closed as ended, with the figures it last showed
                row.state = "ended"
                row.evidence = {**(row.evidence or {}), "ended": {"step": tr.step, "reason": tr.reason}}
                if tracker is not None:
                    tracker.diagnosis_id = None
            elif tr.kind == "resolve":
                # keep the figures that showed the problem; add how it went away
                row.state = "resolved"
                row.resolved_step = tr.step
                row.resolved_at = when
                row.evidence = {**(row.evidence or {}), "resolution": {**evidence, "reason": tr.reason}}
                if tracker is not None:
                    tracker.diagnosis_id = None
            else:
                # the latest figures, keeping those it fired with under "first"
                old = dict(row.evidence or {})
                first = old.get("first") or {k: v for k, v in old.items() if k != "first"}
                row.evidence = {**evidence, "first": first}
                row.reason = tr.reason
            session.flush()
        notify = tr.kind in ("fire", "resolve") or (tr.kind == "update" and tr.notify)  # an end is not news
        if notify:
            notify_safely(session, notifier, row, tr.kind)
        changes.append(
            DiagnosisChange(
                kind=tr.kind,
                run_id=run_id,
                rule_id=tr.rule.id,
                layer=tr.layer,
                episode=row.episode,
                step=tr.step,
                severity=tr.rule.severity,
                state=row.state,
                reason=tr.reason,
                evidence=tr.evidence,
                diagnosis_id=row.id,
                notified=notify,
            )
        )
    return changes


def notify_safely(session: Session, notifier: Any, row: Diagnosis, kind: str) -> None:
    """Call the notifier inside a savepoint: a failing notifier must not lose the diagnosis itself."""
    if notifier is None:
        return
    try:
        with session.begin_nested():
            notifier.record(session, row, kind)
    except Exception:
        log.exception("notifier failed to record %s of %s (run %s); the diagnosis is stored", kind, row.rule_id, row.run_id)
