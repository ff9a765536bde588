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
