"""The scheduled digest: runs started, finished and crashed since the last digest, and the diagnoses raised,
posted to Slack. Off unless ``digest_cron`` is set (a five-field crontab line, e.g. ``0 9 * * 1-5``).

The job writes a ``digest`` row to the outbox (dedupe key: the minute it ran, so two collectors running the same
cron post one digest) and then dispatches it, so a digest is as durable as any notification.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from txwatch.alerts.clock import Clock, as_utc, iso, utcnow
from txwatch.alerts.errors import AlertConfigError
from txwatch.alerts.outbox import insert_ignore
from txwatch.store.models import Diagnosis, Notification, Project, Run

log = logging.getLogger(__name__)

JOB_ID = "txwatch.alerts.digest"
FIRST_PERIOD = timedelta(days=1)  # the first digest covers the last day
MAX_ITEMS = 15  # diagnoses listed by name; the rest are counted
CRASHED = ("crashed", "oom")
# crontab counts weekdays from Sunday = 0 (7 also Sunday); APScheduler 3 from Monday = 0, so numbers become names
_DOW = {"0": "sun", "1": "mon", "2": "tue", "3": "wed", "4": "thu", "5": "fri", "6": "sat", "7": "sun"}


def _dow_names(field: str) -> str:
    out = []
    for part in field.split(","):
        step = ""
        if "/" in part:
            part, step = part.split("/", 1)
            step = "/" + step
        bounds = [_DOW.get(b, b) for b in part.split("-")]
        out.append("-".join(bounds) + step)
    return ",".join(out)


def cron_trigger(expr: str) -> dict[str, Any]:
    """``add_job`` keyword arguments for a crontab line (weekdays numbered as in crontab: 0 = Sunday).

    Raises ``AlertConfigError`` naming ``digest_cron`` when the line is not a valid five-field expression.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise AlertConfigError(
            f"digest_cron {expr!r}: expected five fields 'minute hour day month weekday', e.g. '0 9 * * 1-5'"
        )
    minute, hour, day, month, dow = fields
    kwargs = {"trigger": "cron", "minute": minute, "hour": hour, "day": day, "month": month, "day_of_week": _dow_names(dow)}
    from apscheduler.triggers.cron import CronTrigger  # validation only; the scheduler module owns APScheduler

    try:
        CronTrigger(**{k: v for k, v in kwargs.items() if k != "trigger"}, timezone="UTC")
    except ValueError as exc:
        raise AlertConfigError(f"digest_cron {expr!r}: {exc}") from None
    return {**kwargs, "timezone": "UTC", "coalesce": True, "max_instances": 1}


def summarize(session: Session, since: datetime, until: datetime) -> dict[str, Any]:
    """What happened between ``since`` and ``until``: run counts, crashed runs, diagnoses raised."""
    def runs_where(*cond):
        return session.execute(select(Run, Project.name).join(Project, Run.project_id == Project.id).where(*cond)).all()

    started = runs_where(Run.started > since, Run.started <= until)
    ended = runs_where(Run.ended > since, Run.ended <= until)
    crashed = [(r, p) for r, p in ended if r.status in CRASHED or r.end_reason in CRASHED]
    finished = [(r, p) for r, p in ended if r.status == "finished"]
    diags = session.execute(
        select(Diagnosis, Run.name, Project.name)
        .join(Run, Diagnosis.run_id == Run.id)
        .join(Project, Run.project_id == Project.id)
        .where(Diagnosis.first_seen > since, Diagnosis.first_seen <= until)
        .order_by(Diagnosis.first_seen)
    ).all()
    rank = {"critical": 0, "warning": 1, "info": 2}
    ordered = sorted(diags, key=lambda t: (rank.get(t[0].severity, 3), as_utc(t[0].first_seen)))
    return {
        "since": iso(since),
        "until": iso(until),
        "runs": {
            "started": len(started),
            "finished": len(finished),
            "crashed": len(crashed),
            "crashed_runs": [
                {"project": p, "run": r.name, "reason": r.end_reason or r.status,
                 "error": f"{r.error_type}: {r.error_message}"[:200] if r.error_type else None}
                for r, p in crashed
            ],
        },
        "diagnoses": {
            "total": len(diags),
            "by_severity": dict(Counter(d.severity for d, _, _ in diags)),
            "by_rule": dict(Counter(d.rule_id for d, _, _ in diags)),
            "items": [
                {"project": p, "run": rn, "rule": d.rule_id, "severity": d.severity, "symptom": d.symptom}
                for d, rn, p in ordered[:MAX_ITEMS]
            ],
        },
    }


class DigestJob:
    """The digest's scheduler job: ``run()`` records the digest and dispatches it."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        target: str,
        dispatch: Callable[[datetime | None], int],
        clock: Clock = utcnow,
    ):
        self.session_factory = session_factory
        self.target = target
        self.dispatch = dispatch
        self.clock = clock

    def run(self, now: datetime | None = None) -> bool:
        """Record (at most once per minute, across collectors) and send the digest; True when this call recorded
        it. Never raises: a scheduler job logs and carries on."""
        now = as_utc(now) or self.clock()
        try:
            recorded = self._record(now)
            self.dispatch(now)
            return recorded
        except Exception as exc:
            log.error("the digest job failed: %s: %s", type(exc).__name__, exc)
            return False

    def _record(self, now: datetime) -> bool:
        with self.session_factory() as s, s.begin():
            last = s.scalar(
                select(Notification.payload)
                .where(Notification.kind == "digest", Notification.sink == "slack", Notification.target == self.target)
                .order_by(Notification.id.desc())
                .limit(1)
            )
            since = now - FIRST_PERIOD
            if last and last.get("digest", {}).get("until"):
                since = as_utc(datetime.fromisoformat(last["digest"]["until"].replace("Z", "+00:00")))
            minute = now.replace(second=0, microsecond=0)
            digest = summarize(s, since, now)
            return insert_ignore(s, {
                "dedupe_key": f"slack:{self.target}:digest:{minute:%Y-%m-%dT%H:%M}",
                "diagnosis_id": None,
                "run_id": None,
                "kind": "digest",
                "sink": "slack",
                "target": self.target,
                "payload": {"version": 1, "kind": "digest", "digest": digest},
                "status": "pending",
                "attempts": 0,
                "next_attempt": now,
                "created": now,
                "error": None,
            })


__all__ = ["JOB_ID", "DigestJob", "cron_trigger", "summarize"]
