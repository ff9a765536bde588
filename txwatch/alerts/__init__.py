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
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from txwatch.alerts.clock import Clock, utcnow
from txwatch.alerts.console import ConsoleSink, LineCallback
from txwatch.alerts.dispatcher import Dispatcher
from txwatch.alerts.errors import AlertConfigError
from txwatch.alerts.outbox import Outbox
from txwatch.alerts.routing import Router, parse_routes

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from txwatch.settings import Settings

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0  # one HTTP call to Slack, a webhook or Alertmanager

Job = tuple[str, Callable[[], Any], dict[str, Any]]


class Alerting:
    """The alerting side of a collector: ``outbox`` (the rule engine's notifier), ``dispatch_due``, ``jobs``."""

    def __init__(
        self,
        outbox: Outbox,
        dispatcher: Dispatcher,
        sinks: dict[str, Any],
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
        am = self.sinks.get("alertmanager")
        if am is not None:
            from txwatch.alerts.alertmanager import REFRESH_INTERVAL_S

            out.append((
                "txwatch.alerts.alertmanager-refresh",
                lambda: am.refresh(self.session_factory),
                {"trigger": "interval", "seconds": REFRESH_INTERVAL_S, "coalesce": True, "max_instances": 1},
            ))
        return out

    def close(self) -> None:
        """Close the sinks' HTTP clients. Undelivered notifications stay in the outbox for the next start."""
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as exc:  # closing must not fail a shutdown
                log.debug("closing the %s sink: %s", getattr(sink, "name", "?"), exc)


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


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
    settings that cannot work (a Slack token without a channel, a bad route, a bad ``digest_cron``).
    """
    token = _secret(settings.slack_token)
    slack_webhook = _secret(settings.slack_webhook_url)
    webhook_url = _secret(settings.webhook_url)
    for name, url in (("TXWATCH_SLACK_WEBHOOK_URL", slack_webhook), ("TXWATCH_WEBHOOK_URL", webhook_url),
                      ("TXWATCH_ALERTMANAGER_URL", settings.alertmanager_url), ("TXWATCH_SLACK_BASE_URL", settings.slack_base_url)):
        if url and not url.lower().startswith(("http://", "https://")):
            # the value is not echoed: webhook URLs are secrets
            raise AlertConfigError(f"{name} must be an http:// or https:// URL")
    routes = parse_routes(settings.slack_routes)
    sinks: dict[str, Any] = {}
    slack_mode = None
    if token:
        if not settings.slack_channel and not routes:
            raise AlertConfigError(
                "TXWATCH_SLACK_TOKEN is set but no channel: set TXWATCH_SLACK_CHANNEL (a channel ID like C0123ABC "
                "or #name) or slack_routes"
            )
        if slack_webhook:
            log.warning("both TXWATCH_SLACK_TOKEN and TXWATCH_SLACK_WEBHOOK_URL are set; using the token")
        slack_mode = "token"
    elif slack_webhook:
        if routes:
            raise AlertConfigError(
                "slack_routes need a bot token (TXWATCH_SLACK_TOKEN): an incoming webhook posts to one fixed channel"
            )
        slack_mode = "webhook"
    if slack_mode is not None:
        from txwatch.alerts.slack import SlackSink  # slack-sdk is imported only when Slack is configured

        sinks["slack"] = SlackSink(
            token=token if slack_mode == "token" else None,
            webhook_url=slack_webhook if slack_mode == "webhook" else None,
            base_url=settings.slack_base_url,
            timeout_s=timeout_s,
        )
    if webhook_url:
        from txwatch.alerts.webhook import WebhookSink

        sinks["webhook"] = WebhookSink(webhook_url, timeout_s=timeout_s)
    if settings.alertmanager_url:
        from txwatch.alerts.alertmanager import AlertmanagerSink

        sinks["alertmanager"] = AlertmanagerSink(settings.alertmanager_url, public_url=settings.public_url, timeout_s=timeout_s)

    router = Router(
        slack_mode=slack_mode,
        slack_channel=settings.slack_channel,
        routes=routes,
        mention_critical=settings.slack_mention_critical,
        webhook="webhook" in sinks,
        alertmanager="alertmanager" in sinks,
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
