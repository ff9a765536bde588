"""Background jobs of a collector (APScheduler 3, one BackgroundScheduler).

- rules: the rule engine's time-based rules (run-stalled), every ``RULES_INTERVAL_S``
- liveness: runs whose heartbeats stopped are marked stalled, those whose process is gone (same host, pid
  no longer alive) vanished; then the rule engine's ``check_time`` sees them
- dispatch: the alert outbox, every ``DISPATCH_INTERVAL_S``; plus ``alerting.jobs()`` (digest, ...)
- retention: raw points older than ``retention_days`` thinned to their rollups (off by default)
- checkpoint: SQLite WAL checkpoint
Every job is wrapped: it logs a failure once, counts it (``txwatch_job_failures_total``) and carries on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select, text, update

from txwatch import telemetry
from txwatch.store.models import Run, Series

if TYPE_CHECKING:
    from txwatch.collector.services import Services

log = logging.getLogger(__name__)

RULES_INTERVAL_S = 15.0  # run-stalled needs minutes of silence; 15 s keeps it timely at no cost
DISPATCH_INTERVAL_S = 1.0  # notifications leave within about a second of being decided
RETENTION_INTERVAL_S = 3600.0
CHECKPOINT_INTERVAL_S = 60.0  # keeps the SQLite WAL file from growing between automatic checkpoints
JOB_THREADS = 4
# A job still running when its next turn comes is skipped, and APScheduler warns each time: a dispatch held up by a
# slow Slack logged that every second (574 lines in 9.5 minutes). Each distinct line is let through once this often.
REPEATED_LOG_EVERY_S = 60.0


class _Repeats(logging.Filter):
    """Lets each distinct log line (message and arguments) through once per ``every_s``; the next one that passes
    says how many were held back meanwhile."""

    def __init__(self, every_s: float = REPEATED_LOG_EVERY_S):
        super().__init__()
        self.every_s = every_s
        self._seen: dict[tuple, list[float]] = {}  # (msg, args) -> [last passed at, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.msg, repr(record.args))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} (and {int(seen[1])} more times in the last {self.every_s:g} s)"
        if len(self._seen) > 1000:  # bounded: one entry per job and message, in practice a handful
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


def timed_job(job: str, fn: Callable[[], object]) -> Callable[[], object]:
    """Wrap a background job: time it, count failures, log each distinct failure once, never raise."""
    seen: set[str] = set()

    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            telemetry.JOB_FAILURES.labels(job).inc()
            key = f"{exc.__class__.__name__}: {exc}"[:200]
            if key not in seen:
                seen.add(key)
                log.exception("background job %s failed (this error is logged once)", job)
            return None
        finally:
            telemetry.JOB_DURATION.labels(job).observe(time.perf_counter() - started)

    run.__name__ = f"txwatch_job_{job}"
    return run


# APScheduler's own lines go through this logger (a child of ours), rate-limited as above.
_APS_LOG = logging.getLogger(__name__ + ".apscheduler")
_APS_LOG.addFilter(_Repeats())


class Scheduler:
    """The collector's background jobs over ``services``; ``start()`` and ``shutdown()``."""

    def __init__(self, services: Services, *, retention: bool = True, checkpoint: bool = True):
        self.services = services
        self._sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(JOB_THREADS, pool_kwargs={"thread_name_prefix": "txwatch.collector.scheduler"})},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone=timezone.utc,
            logger=_APS_LOG,
        )
        self._hostname = socket.gethostname()
        add = self._add
        add("liveness", self.liveness, seconds=RULES_INTERVAL_S)
        if services.alerting is not None:
            add("dispatch", services.alerting.dispatch_due, seconds=DISPATCH_INTERVAL_S)
            for job_id, fn, trigger_kwargs in services.alerting.jobs():
                kwargs = dict(trigger_kwargs)
                trigger = kwargs.pop("trigger", "interval" if "seconds" in kwargs or "minutes" in kwargs else "cron")
                self._sched.add_job(timed_job(job_id, fn), trigger, id=job_id, name=job_id, **kwargs)
        if retention and services.settings.retention_days is not None:
            add("retention", self.retention, seconds=RETENTION_INTERVAL_S)
        if checkpoint and services.db.dialect.name == "sqlite":
            add("checkpoint", self.checkpoint, seconds=CHECKPOINT_INTERVAL_S)

    def _add(self, job_id: str, fn, seconds: float) -> None:
        self._sched.add_job(timed_job(job_id, fn), "interval", seconds=seconds, id=job_id, name=job_id)

    def job_ids(self) -> list[str]:
        return [j.id for j in self._sched.get_jobs()]

    def start(self) -> None:
        self._sched.start()

    def shutdown(self, wait: bool = True) -> None:
        if self._sched.running:
            self._sched.shutdown(wait=wait)

    # -- jobs ------------------------------------------------------------------------------------------------

    def liveness(self, now: datetime | None = None) -> dict[str, int]:
        """Mark silent runs stalled and dead local ones vanished, then run the time-based rules."""
        now = now or datetime.now(timezone.utc)
        stall_after = timedelta(seconds=self.services.settings.stall_after_s)
        changed = {"stalled": 0, "vanished": 0}
        with self.services.session_factory.begin() as session:
            silent = session.execute(
                select(Run.id, Run.info, Run.host, Run.last_seen, Run.status).where(
                    Run.status.in_(("running", "stalled"))
                )
            ).all()
            for run in silent:
                last_seen = run.last_seen  # aware UTC: models.UTCDateTime
                if now - last_seen < stall_after:
                    continue
                if self._process_gone(run):
                    session.execute(
                        update(Run).where(Run.id == run.id, Run.status.in_(("running", "stalled")))
                        .values(status="vanished", end_reason="vanished", ended=last_seen)
                    )
                    changed["vanished"] += 1
                elif run.status == "running":
                    # only if nothing arrived since we looked (a batch may have just revived it)
                    session.execute(
                        update(Run).where(Run.id == run.id, Run.status == "running", Run.last_seen == run.last_seen)
                        .values(status="stalled")
                    )
                    changed["stalled"] += 1
        if self.services.rules is not None:
            self.services.rules.check_time(now.timestamp())
        return changed

    def _process_gone(self, run) -> bool:
        """True when the run's training process ran on this host and its pid is no longer alive."""
        info = run.info or {}
        pid = info.get("pid")
        if not isinstance(pid, int) or run.host != self._hostname:
            return False  # another machine's process: we cannot tell, it stays stalled
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, owned by someone else
        return False

    def retention(self, now: datetime | None = None) -> int:
        """Delete raw points older than ``retention_days`` whose rollups keep the shape; returns points deleted."""
        days = self.services.settings.retention_days
        if days is None:
            return 0
        cutoff = (now or datetime.now(timezone.utc)).timestamp() - days * 86400.0
        deleted = 0
        with self.services.session_factory() as session:
            series = session.execute(select(Series.id, Series.downsampled_before)).all()
        for sid, before in series:
            deleted += self._thin(sid, before or 0, cutoff)
        if deleted:
            log.info("retention: thinned %d raw points older than %s days into rollups", deleted, days)
        return deleted

    def _thin(self, sid: int, before: int, cutoff: float) -> int:
        with self.services.session_factory.begin() as session:
            upto = session.execute(
                text("SELECT max(step) FROM points WHERE series_id = :sid AND step >= :before AND time < :cutoff"),
                {"sid": sid, "before": before, "cutoff": cutoff},
            ).scalar()
            if upto is None:
                return 0
            # the mark first: a reader between chunks reads rollups below it, never a half-deleted range
            session.execute(update(Series).where(Series.id == sid).values(downsampled_before=upto + 1))
            n = session.execute(
                text("DELETE FROM points WHERE series_id = :sid AND step <= :upto"), {"sid": sid, "upto": upto}
            ).rowcount
        return max(n or 0, 0)

    def checkpoint(self) -> None:
        with self.services.db.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
