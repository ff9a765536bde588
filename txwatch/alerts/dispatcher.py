"""The dispatcher: claims due outbox rows, hands them to their sinks, records what happened.

Claiming is safe with several dispatchers on one database (two collectors on one PostgreSQL, or a restarted one):
a row is taken with a compare-and-set ``UPDATE ... WHERE id = ? AND attempts = ? AND status = ?`` that moves it to
``sending`` with a claim that expires after ``CLAIM_TTL_S`` (on PostgreSQL the candidates are first selected
``FOR UPDATE SKIP LOCKED`` so dispatchers do not queue on each other's rows). A dispatcher that dies mid-send
leaves its rows ``sending``; when the claim expires another takes them, and the attempt counter tells the sink
that an earlier attempt may have been delivered (Slack then looks before posting again).

Outcomes: sent (with the external ref, e.g. Slack channel + ts), retried with exponential backoff (or after
Retry-After), deferred (an update waiting for its episode's first message), or failed with a clear reason
(permanent errors, or ``MAX_ATTEMPTS`` used up): logged once per sink, target and reason, counted in metrics,
never retried.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from txwatch import telemetry
from txwatch.alerts.clock import Clock, as_utc, utcnow
from txwatch.alerts.ledger import Ledger
from txwatch.alerts.sinks.protocol import Claimed, Result, Sink, retry
from txwatch.alerts.redact import SECRETS
from txwatch.alerts.silences import matching_silence
from txwatch.store.models import Notification

log = logging.getLogger(__name__)

CLAIM_TTL_S = 300.0  # longer than one delivery with all its in-call retries and timeouts (about a minute at worst)
CLAIM_BATCH = 50  # rows claimed per round
MAX_ROUNDS = 20  # rounds per dispatch_due call, so one call is bounded even with a large backlog
RETRY_BASE_S = 15.0  # first backoff; doubles per attempt
RETRY_MAX_S = 1800.0  # backoff cap: a receiver that is down for hours is tried twice an hour
MAX_ATTEMPTS = 12  # about three hours of trying before a notification is given up
DEFER_S = 2.0  # an update waiting for its first message looks again this soon


def backoff_s(attempts: int) -> float:
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts - 1))


class Dispatcher:
    """Sends due notifications through the configured sinks. ``dispatch_due`` is safe to call from several
    threads (serialized here) and several processes (claims in the database)."""

    def __init__(self, session_factory: sessionmaker[Session], sinks: Mapping[str, Sink], clock: Clock = utcnow):
        self.session_factory = session_factory
        self.sinks = dict(sinks)
        self.clock = clock
        self.ledger = Ledger(session_factory)
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str, str]] = set()
        self._db_trouble: str | None = None

    def dispatch_due(self, now: datetime | None = None) -> int:
        """Send every notification due at ``now`` (default: the clock); returns how many were sent."""
        if not self.sinks:
            return 0
        with self._lock:
            total = 0
            try:
                for _ in range(MAX_ROUNDS):
                    at = as_utc(now) or self.clock()
                    claimed = self._claim(at)
                    if not claimed:
                        break
                    total += self._deliver(claimed, at)
                self._db_trouble = None
            except SQLAlchemyError as exc:
                # The database is away (restart, failover): claimed rows stay claimed until CLAIM_TTL_S, then
                # any dispatcher retries them. Report once per kind of trouble, not every few seconds.
                kind = type(exc).__name__
                if self._db_trouble != kind:
                    self._db_trouble = kind
                    log.error("cannot dispatch notifications: database error %s: %s", kind, SECRETS.text(exc).splitlines()[0])
            return total

    # -- claiming -----------------------------------------------------------------------------------------------

    def _claim(self, now: datetime) -> list[Claimed]:
        with self.session_factory() as s, s.begin():
            postgres = s.get_bind().dialect.name == "postgresql"
            cols = (Notification.id, Notification.attempts, Notification.status, Notification.sink,
                    Notification.kind, Notification.target, Notification.run_id)
            q = (
                select(*cols)
                .where(Notification.status.in_(("pending", "sending")), Notification.next_attempt <= now,
                       Notification.sink.in_(list(self.sinks)))
                .order_by(Notification.id)
                .limit(CLAIM_BATCH)
            )
            if postgres:
                q = q.with_for_update(skip_locked=True)
            candidates = list(s.execute(q).all())
            # Fires of the same run and Slack channel go out as one message: take the run's other pending fires
            # too, even if their group window has not ended (the first one's has).
            groups = {(c.target, c.run_id) for c in candidates if c.sink == "slack" and c.kind == "fire"}
            if groups:
                mates = (
                    select(*cols)
                    .where(Notification.status == "pending", Notification.sink == "slack", Notification.kind == "fire",
                           Notification.id.not_in([c.id for c in candidates]),
                           or_(*[and_(Notification.target == t, Notification.run_id == r) for t, r in groups]))
                    .order_by(Notification.id)
                )
                if postgres:
                    mates = mates.with_for_update(skip_locked=True)
                candidates.extend(s.execute(mates).all())
            taken = []
            for c in candidates:
                res = s.execute(
                    update(Notification)
                    .where(Notification.id == c.id, Notification.attempts == c.attempts, Notification.status == c.status)
                    .values(status="sending", attempts=c.attempts + 1, next_attempt=now + timedelta(seconds=CLAIM_TTL_S))
                    .execution_options(synchronize_session=False)
                )
                if res.rowcount == 1:
                    taken.append(c.id)
            if not taken:
                return []
            rows = s.scalars(select(Notification).where(Notification.id.in_(taken)).order_by(Notification.id)).all()
            claimed = []
            for n in rows:
                if n.kind in ("fire", "update") and self._silenced_now(s, n, now):
                    continue
                claimed.append(Claimed(
                    id=n.id, dedupe_key=n.dedupe_key, diagnosis_id=n.diagnosis_id, run_id=n.run_id, kind=n.kind,
                    sink=n.sink, target=n.target or "", payload=n.payload or {}, attempts=n.attempts,
                    created=as_utc(n.created),
                ))
            return claimed

    def _silenced_now(self, s: Session, n: Notification, now: datetime) -> bool:
        """A silence added after the notification was decided still stops it (it is marked silenced)."""
        run = (n.payload or {}).get("run") or {}
        diag = (n.payload or {}).get("diagnosis") or {}
        if not run or not diag:
            return False
        silence = matching_silence(s, project=run.get("project", ""), run=run.get("name", ""), rule=diag.get("rule", ""), now=now)
        if silence is None:
            return False
        n.status = "silenced"
        n.attempts -= 1  # not an attempt
        n.error = f"silenced by silence #{silence.id} before it was sent"
        telemetry.ALERTS_SILENCED.labels(sink=n.sink).inc()
        return True

    # -- delivering ---------------------------------------------------------------------------------------------

    def _deliver(self, claimed: list[Claimed], now: datetime) -> int:
        sent = 0
        by_sink: dict[str, list[Claimed]] = {}
        for c in claimed:
            by_sink.setdefault(c.sink, []).append(c)
        jobs = []
        for name, rows in by_sink.items():
            sink = self.sinks[name]
            jobs.extend((sink, batch) for batch in sink.batches(rows))
        jobs.sort(key=lambda job: min(r.id for r in job[1]))  # oldest first: a fire before its updates
        for sink, batch in jobs:
            try:
                results = sink.deliver(batch, self.ledger)
            except Exception as exc:  # a sink bug: keep the rows, back off, say what happened (secrets masked)
                text = SECRETS.text("".join(traceback.format_exception(exc)))
                log.error("the %s sink raised while delivering notification(s) %s:\n%s", sink.name, [r.id for r in batch], text)
                results = {r.id: retry("internal_error", f"{type(exc).__name__}: {SECRETS.text(exc)}") for r in batch}
            sent += self._finish(sink.name, batch, results, now)
        return sent

    def _finish(self, sink: str, batch: list[Claimed], results: dict[int, Result], now: datetime) -> int:
        sent = 0
        with self.session_factory() as s, s.begin():
            for row in batch:
                res = results.get(row.id) or retry("internal_error", "the sink gave no result for this notification")
                values = self._outcome(sink, row, res, now)
                done = s.execute(
                    update(Notification)
                    .where(Notification.id == row.id, Notification.attempts == row.attempts, Notification.status == "sending")
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if done.rowcount != 1:
                    log.warning("notification %s was claimed by another dispatcher while this one sent it", row.id)
                elif values["status"] == "sent":
                    sent += 1
        return sent

    def _outcome(self, sink: str, row: Claimed, res: Result, now: datetime) -> dict:
        detail = SECRETS.text(res.detail)
        if res.status == "sent":
            telemetry.ALERTS_SENT.labels(sink=sink).inc()
            self._logged = {k for k in self._logged if k[0] != sink}  # the sink works again: report the next trouble
            return {"status": "sent", "sent_at": now, "external_ref": res.ref, "error": None}
        if res.status == "defer":
            return {"status": "pending", "attempts": row.attempts - 1, "next_attempt": now + timedelta(seconds=DEFER_S), "error": detail}
        if res.status == "silenced":
            return {"status": "silenced", "error": detail}
        if res.status == "retry" and row.attempts < MAX_ATTEMPTS:
            telemetry.ALERTS_RETRIED.labels(sink=sink, reason=res.reason).inc()
            wait = max(backoff_s(row.attempts), res.retry_after_s or 0.0)
            self._log_once(logging.WARNING, sink, row.target, res.reason,
                           "%s notification to %s not delivered yet (%s); retrying in %.0fs", sink, row.target or "-", detail, wait)
            return {"status": "pending", "next_attempt": now + timedelta(seconds=wait), "error": detail}
        if res.status == "retry":
            detail = f"gave up after {row.attempts} attempts; last error: {detail}"
        telemetry.ALERTS_FAILED.labels(sink=sink, reason=res.reason or "unknown").inc()
        self._log_once(logging.ERROR, sink, row.target, res.reason,
                       "%s notification to %s failed and will not be retried: %s", sink, row.target or "-", detail)
        return {"status": "failed", "error": detail}

    def _log_once(self, level: int, sink: str, target: str, reason: str, msg: str, *args: object) -> None:
        key = (sink, target, f"{level}:{reason}")
        if key in self._logged:
            log.debug(msg, *args)
            return
        self._logged.add(key)
        log.log(level, msg, *args)
