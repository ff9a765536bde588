"""The parts of a running collector, wired together once (by the daemon, the embedded mode or a test).

Contract between the parts (see docs/design.md):
- ``txwatch.rules.build_engine(settings, session_factory, notifier) -> RuleEngine``
- ``txwatch.alerts.build_alerting(settings, session_factory) -> Alerting`` (``.outbox`` is the notifier)
- ``txwatch.collector.core.Collector(session_factory, engine=...)`` takes batches
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from txwatch.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Engine
    session_factory: sessionmaker[Session]
    collector: Any  # txwatch.collector.core.Collector
    rules: Any = None  # txwatch.rules.RuleEngine
    alerting: Any = None  # txwatch.alerts.Alerting
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

    The rule engine and alerting are optional parts: when their package is missing or broken the collector
    still stores everything (logged once). A bad rule file or alert setting is a configuration error and
    raises (``RuleError``, ``AlertConfigError``), naming what is wrong.

    Args:
        migrate: apply the database migrations first (the daemon and embedded mode do).
        console: passed to ``build_alerting``: True logs diagnoses, a callback prints them (embedded mode).
    """
    import logging

    from txwatch.collector.core import Collector
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
    """Build an optional part; a missing package or an internal bug degrades, a configuration error raises."""
    try:
        return build()
    except ImportError as exc:
        log.warning("%s not available (%s): runs are stored but not diagnosed/alerted", what, exc)
        return None
    except Exception as exc:
        if _is_config_error(exc):
            raise
        log.exception("%s could not start: runs are stored but not diagnosed/alerted", what)
        return None


def _is_config_error(exc: Exception) -> bool:
    from txwatch.settings import SettingsError

    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, SettingsError) or bool(names & {"RuleError", "AlertConfigError", "ConditionError"})
