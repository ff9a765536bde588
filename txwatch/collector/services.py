"""The parts of a running collector, wired together once (by the daemon, the embedded mode or a test).

Contract between the parts (see docs/design.md):
- ``txwatch.rules.build_engine(settings, session_factory, notifier) -> RuleEngine``
- ``txwatch.alerts.build_alerting(settings, session_factory) -> Alerting`` (``.outbox`` is the notifier)
- ``txwatch.ingest.queue.Collector(session_factory, engine=...)`` takes batches
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from txwatch.alerts import Alerting
    from txwatch.ingest.queue import Collector
    from txwatch.rules import RuleEngine
    from txwatch.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Engine
    session_factory: sessionmaker[Session]
    collector: Collector
    rules: RuleEngine | None = None
    alerting: Alerting | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Close the alert sinks and the database pool (the daemon calls this last, after the server stopped)."""
        import logging

        for part in (self.alerting, self.rules):
            close = getattr(part, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing must go on: the database still has to be released
                    logging.getLogger(__name__).exception("closing %s failed", type(part).__name__)
        self.db.dispose()


def build_services(settings: Settings, *, migrate: bool = True, console: Any = False) -> Services:
    """Wire the collector's parts on ``settings.db_url``: migrated store, alerting, rule engine, collector.

    A bad rule file or alert setting is a configuration error and raises (a ``ConfigError``: ``RuleError``,
    ``AlertConfigError``), naming what is wrong. An ImportError of txwatch's own modules is a broken install
    and raises too; only a rule engine or alerting that fails for another reason degrades (logged once):
    the collector still stores everything.

    Args:
        migrate: apply the database migrations first (the daemon and embedded mode do).
        console: passed to ``build_alerting``: True logs diagnoses, a callback prints them (embedded mode).
    """
    import logging

    from txwatch.ingest.queue import Collector
    from txwatch.store.db import make_engine, session_factory, upgrade

    log = logging.getLogger(__name__)
    engine = make_engine(settings.db_url)
    try:
        if migrate:
            upgrade(engine)
        sf = session_factory(engine)
        alerting = _optional("alerting", lambda: _build_alerting(settings, sf, console), log)
        notifier = getattr(alerting, "outbox", None)
        rules = _optional("rule engine", lambda: _build_rules(settings, sf, notifier), log)
    except BaseException:
        engine.dispose()
        raise
    return Services(settings=settings, db=engine, session_factory=sf, collector=Collector(sf, rules=rules, max_queue=settings.ingest_max_in_flight),
                    rules=rules, alerting=alerting)


def _build_alerting(settings, sf, console):
    from txwatch.alerts import build_alerting

    return build_alerting(settings, sf, console=console)


def _build_rules(settings, sf, notifier):
    from txwatch.rules import build_engine

    return build_engine(settings, sf, notifier=notifier)


def _optional(what: str, build, log):
    """Build a part the collector can run without: an internal bug degrades (logged), a configuration error
    or an ImportError (a broken install: these parts need no optional package) raises."""
    from txwatch.errors import ConfigError

    try:
        return build()
    except (ConfigError, ImportError):
        raise
    except Exception:
        log.exception("%s could not start: runs are stored but not diagnosed/alerted", what)
        return None
