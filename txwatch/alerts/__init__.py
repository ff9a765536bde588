"""Alerts: diagnoses to Slack, a JSON webhook, Alertmanager and the console, through a durable outbox.

    alerting = build_alerting(settings, session_factory)
    engine = build_engine(settings, session_factory, notifier=alerting.outbox)   # the rule engine records
    alerting.dispatch_due()        # the scheduler calls this every second or so
    for job_id, fn, trigger in alerting.jobs(): scheduler.add_job(fn, id=job_id, **trigger)
    alerting.close()

See docs/alerts.md for the settings, the Slack app, routing, the webhook payload and Alertmanager.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from txwatch.alerts.clock import Clock, utcnow
from txwatch.alerts.dispatcher import Dispatcher
from txwatch.alerts.errors import AlertConfigError
from txwatch.alerts.outbox import Outbox
from txwatch.alerts.routing import Router
from txwatch.alerts.sinks import build_sinks
from txwatch.alerts.sinks.console import ConsoleSink, LineCallback
from txwatch.alerts.sinks.protocol import Job, ScheduledSink, Sink

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from txwatch.settings import Settings

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0  # one HTTP call to Slack, a webhook or Alertmanager

class Alerting:
    """The alerting side of a collector: ``outbox`` (the rule engine's notifier), ``dispatch_due``, ``jobs``."""

    def __init__(
        self,
        outbox: Outbox,
        dispatcher: Dispatcher,
        sinks: dict[str, Sink],
        session_factory: sessionmaker[Session],
        digest: Any = None,
        digest_trigger: dict[str, Any] | None = None,
    ):
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.sinks = sinks
        self.session_factory = session_factory
        self.digest = digest
        self._digest_trigger = digest_trigger

    def dispatch_due(self, now: datetime | None = None) -> int:
        """Send every notification that is due; returns how many were sent. Safe to call concurrently (threads
        and collectors); never raises for delivery problems (they are logged once and counted)."""
        return self.dispatcher.dispatch_due(now)

    def jobs(self) -> list[Job]:
        """Scheduler jobs: ``(job_id, callable, add_job keyword arguments)``. The digest (when ``digest_cron`` is
        set) and the Alertmanager refresh (when Alertmanager is configured). ``dispatch_due`` is not included:
        the scheduler runs it on its own short interval."""
        out: list[Job] = []
        if self.digest is not None and self._digest_trigger is not None:
            from txwatch.alerts.digest import JOB_ID

            out.append((JOB_ID, self.digest.run, dict(self._digest_trigger)))
        for sink in self.sinks.values():
            if isinstance(sink, ScheduledSink):
                out.extend(sink.jobs(self.session_factory))
        return out

    def close(self) -> None:
        """Close the sinks' HTTP clients. Undelivered notifications stay in the outbox for the next start."""
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as exc:  # closing must not fail a shutdown
                log.debug("closing the %s sink: %s", getattr(sink, "name", "?"), exc)


def build_alerting(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    console: bool | LineCallback = False,
    clock: Clock = utcnow,
    timeout_s: float = SEND_TIMEOUT_S,
) -> Alerting:
    """Build the outbox, the sinks and the dispatcher from ``settings``.

    ``console``: True to log diagnoses as readable lines (logger ``txwatch.alerts.console``), or a callback
    ``(text, payload)`` that prints them (embedded mode, ``txwatch demo``). Raises ``AlertConfigError`` for
    a ``digest_cron`` that cannot work; the rest (routes, URLs, a Slack token without a channel) are checked
    with the settings (``txwatch.settings``).
    """
    slack_mode = settings.slack_mode
    sinks = build_sinks(settings, timeout_s=timeout_s)  # the registry: txwatch/alerts/sinks/__init__.py
    router = Router(
        slack_mode=slack_mode,
        slack_channel=settings.slack_channel,
        routes=settings.slack_routes,
        mention_critical=settings.slack_mention_critical,
        others=[name for name in sinks if name != "slack"],
    )
    console_sink = None
    if console:
        console_sink = ConsoleSink(console if callable(console) else None)
    outbox = Outbox(
        router,
        public_url=settings.public_url,
        repeat_interval_s=settings.repeat_interval_s,
        group_window_s=settings.group_window_s,
        console=console_sink,
        clock=clock,
    )
    dispatcher = Dispatcher(session_factory, sinks, clock=clock)

    digest = trigger = None
    if settings.digest_cron:
        from txwatch.alerts.digest import DigestJob, cron_trigger

        trigger = cron_trigger(settings.digest_cron)
        if slack_mode is None:
            raise AlertConfigError("digest_cron is set but Slack is not: set TXWATCH_SLACK_TOKEN or TXWATCH_SLACK_WEBHOOK_URL")
        target = settings.slack_channel if slack_mode == "token" else "webhook"
        if not target:
            raise AlertConfigError("digest_cron needs TXWATCH_SLACK_CHANNEL: the channel the digest is posted to")
        digest = DigestJob(session_factory, target, dispatcher.dispatch_due, clock=clock)
    return Alerting(outbox, dispatcher, sinks, session_factory, digest=digest, digest_trigger=trigger)


__all__ = [
    "AlertConfigError",
    "Alerting",
    "ConsoleSink",
    "Outbox",
    "build_alerting",
]
