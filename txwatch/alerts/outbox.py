"""The outbox: deciding a notification means writing a ``notifications`` row, in the rule engine's transaction.

``Outbox.record(session, diagnosis, kind)`` is the rule engine's notifier. It runs inside the transaction that
writes the diagnosis change, so a notification exists exactly when the diagnosis change does: a crash before the
commit loses both, a crash after it leaves a pending row that the dispatcher sends after the restart.

Each routed destination (sink + channel) gets its own row with a unique ``dedupe_key``::

    {sink}:{target}:{diagnosis id}:{kind}:{episode}[:{update number}]

so two collectors recording the same change write one row (``INSERT ... ON CONFLICT DO NOTHING``). Updates are
recorded no more often than ``repeat_interval_s`` per destination and episode; a matching silence stores the row
with status ``silenced`` (recorded, never sent).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from txwatch import telemetry
from txwatch.alerts.clock import Clock, as_utc, utcnow
from txwatch.alerts.sinks.console import ConsoleSink
from txwatch.alerts.payload import diagnosis_payload
from txwatch.alerts.routing import Router, Target
from txwatch.alerts.silences import matching_silence
from txwatch.rules.incidents import JOIN_STEPS
from txwatch.store.models import OPEN_STATES, Diagnosis, Notification

log = logging.getLogger(__name__)

KINDS = ("fire", "update", "resolve")
ANNOUNCED = ("pending", "sending", "sent")  # statuses of a row that is (or will be) in front of people
_CONSOLE_KEY = "txwatch.alerts.console"
_CONSOLE_HOOKED = "txwatch.alerts.console_hooked"


def dedupe_key(target: Target, diagnosis: Diagnosis, kind: str, update_no: int | None = None) -> str:
    key = f"{target.sink}:{target.target}:{diagnosis.id}:{kind}:{diagnosis.episode}"
    return key if update_no is None else f"{key}:{update_no}"


def insert_ignore(session: Session, values: dict[str, Any]) -> bool:
    """Insert a notification unless its dedupe_key exists; True when inserted. Never aborts the transaction."""
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = (
            insert(Notification).values(**values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(Notification.id)  # rowcount is not reliable for ORM inserts on every driver
        )
        return session.execute(stmt).first() is not None
    try:  # other databases: a savepoint keeps the caller's transaction usable after a duplicate
        with session.begin_nested():
            session.add(Notification(**values))
        return True
    except IntegrityError:
        return False


class Outbox:
    """The rule engine's notifier: turns diagnosis changes into outbox rows (and console lines)."""

    def __init__(
        self,
        router: Router,
        *,
        public_url: str | None = None,
        repeat_interval_s: float = 3600.0,
        group_window_s: float = 10.0,
        console: ConsoleSink | None = None,
        clock: Clock = utcnow,
    ):
        self.router = router
        self.public_url = public_url
        self.repeat_interval = timedelta(seconds=repeat_interval_s)
        self.group_window = timedelta(seconds=group_window_s)
        self.console = console
        self.clock = clock

    def record(self, session: Session, diagnosis: Diagnosis, kind: str) -> int:
        """Record the notifications for one diagnosis change; returns how many rows were written.

        Call inside the transaction that writes the change (the caller commits). ``kind`` is "fire", "update"
        or "resolve"; anything else raises ``ValueError`` (a programming error).
        """
        if kind not in KINDS:
            raise ValueError(f"notification kind must be one of {KINDS}, got {kind!r}")
        if diagnosis.id is None:
            session.flush()  # the dedupe key needs the row's id
        now = self.clock()
        payload = diagnosis_payload(session, diagnosis, kind, self.public_url)
        d, r = payload["diagnosis"], payload["run"]
        view = {"severity": d["severity"], "project": r["project"], "run": r["name"], "rule": d["rule"], "labels": d["labels"]}
        targets = self.router.route(view)
        if not targets and self.console is None:
            return 0
        silence = matching_silence(session, project=r["project"], run=r["name"], rule=d["rule"], now=now)
        written = 0
        for target in targets:
            values = self._decide(session, diagnosis, kind, target, silence, now)
            if values is None:
                continue
            joins = values.pop("incident_of", None)
            values["payload"] = {**payload, "mention": target.mention} if target.mention else payload
            if joins is not None:
                values["payload"] = {**values["payload"], "incident_of": joins}
            if insert_ignore(session, values):
                written += 1
                if values["status"] == "silenced":
                    telemetry.ALERTS_SILENCED.labels(sink=target.sink).inc()
        if self.console is not None and silence is None and kind in ("fire", "resolve"):
            self._queue_console(session, payload)
        return written

    def _decide(
        self, session: Session, diagnosis: Diagnosis, kind: str, target: Target, silence: Any, now: datetime
    ) -> dict[str, Any] | None:
        """The row to write for one target, or None when nothing should be (repeat interval, nothing to resolve)."""
        prior = session.execute(
            select(Notification.kind, Notification.status, Notification.created).where(
                Notification.diagnosis_id == diagnosis.id,
                Notification.sink == target.sink,
                Notification.target == target.target,
            )
        ).all()
        status = "silenced" if silence is not None else "pending"
        error = f"silenced by silence #{silence.id} until {as_utc(silence.expires):%Y-%m-%d %H:%M} UTC" if silence else None
        next_attempt = now
        update_no = None
        joins = None
        if kind == "fire":
            if target.sink == "slack" and status == "pending":
                joins = self._incident_anchor(session, diagnosis, target)
                next_attempt = now if joins is not None else self._group_due(session, diagnosis, target, now)
        elif kind == "update":
            if prior:
                last = max(as_utc(p.created) for p in prior)
                if now - last < self.repeat_interval:
                    return None
            update_no = 1 + sum(1 for p in prior if p.kind == "update")
        else:  # resolve
            if not prior:
                return None  # nothing was decided for this destination, so there is nothing to take back
            if not any(p.status in ANNOUNCED for p in prior):
                status = "silenced"
                error = "nothing was sent for this episode (silenced or failed), so the resolve is not either"
            else:
                # A resolve goes out even under a silence: it closes a message people already saw.
                status, error = "pending", None
        return {
            "incident_of": joins,
            "dedupe_key": dedupe_key(target, diagnosis, kind, update_no),
            "diagnosis_id": diagnosis.id,
            "run_id": diagnosis.run_id,
            "kind": kind,
            "sink": target.sink,
            "target": target.target,
            "status": status,
            "attempts": 0,
            "next_attempt": next_attempt,
            "created": now,
            "error": error,
        }

    def _incident_anchor(self, session: Session, diagnosis: Diagnosis, target: Target) -> int | None:
        """The diagnosis whose Slack message opened the incident this one belongs to, if that message is out.

        Same run and destination, still firing or resolved within ``incidents.JOIN_STEPS`` of this one's first
        step (the incidents' own grouping), its fire sent or being sent as a message of its own (not itself a
        reply). A fire still pending joins the group window's message instead."""
        first = diagnosis.first_step or 0
        found = session.execute(
            select(Notification.diagnosis_id, Notification.payload)
            .join(Diagnosis, Diagnosis.id == Notification.diagnosis_id)
            .where(
                Notification.run_id == diagnosis.run_id,
                Notification.sink == target.sink,
                Notification.target == target.target,
                Notification.kind == "fire",
                Notification.status.in_(("sending", "sent")),
                Notification.diagnosis_id != diagnosis.id,
                or_(Diagnosis.state.in_(OPEN_STATES), Diagnosis.resolved_step >= first - JOIN_STEPS),
            )
            .order_by(Notification.id)
            .limit(50)
        ).all()
        for diagnosis_id, payload in found:
            if not (payload or {}).get("incident_of"):
                return diagnosis_id
        return None

    def _group_due(self, session: Session, diagnosis: Diagnosis, target: Target, now: datetime) -> datetime:
        """When a Slack fire is due: with the run's open group if there is one, else after the group window."""
        if self.group_window <= timedelta(0):
            return now
        due = session.scalar(
            select(func.min(Notification.next_attempt)).where(
                Notification.sink == target.sink,
                Notification.target == target.target,
                Notification.run_id == diagnosis.run_id,
                Notification.kind == "fire",
                Notification.status == "pending",
            )
        )
        if due is not None:
            return max(as_utc(due), now)
        return now + self.group_window

    # Console lines are printed only once the change is committed: a rolled-back diagnosis is never shown.
    # The listeners stay on the session (removing one while SQLAlchemy dispatches it is not allowed).
    def _queue_console(self, session: Session, payload: dict[str, Any]) -> None:
        if not session.info.get(_CONSOLE_HOOKED):
            session.info[_CONSOLE_HOOKED] = True
            event.listen(session, "after_commit", self._emit_console)
            event.listen(session, "after_rollback", self._drop_console)
        session.info.setdefault(_CONSOLE_KEY, []).append(payload)

    def _emit_console(self, session: Session) -> None:
        for payload in session.info.pop(_CONSOLE_KEY, None) or []:
            self.console.emit(payload)

    def _drop_console(self, session: Session) -> None:
        session.info.pop(_CONSOLE_KEY, None)
