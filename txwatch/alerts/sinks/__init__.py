"""The alert sinks, registered by name.

A sink is one module here with a ``from_settings(settings, *, timeout_s)`` (a ``SinkFactory``) and one
``register`` line below: its name (the outbox rows' ``sink``), its module (imported only when the sink is
configured, so slack-sdk stays out of a collector without Slack) and when it is configured. The sinks know
nothing of each other (``.importlinter``, the ``sinks`` contract); what they share is the protocol
(``protocol.py``) and the HTTP helper (``http_post.py``). The console sink is not registered: it is not
delivered through the outbox but handed each diagnosis as it is decided (``console.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from txwatch.alerts.sinks.protocol import Sink, SinkFactory
    from txwatch.settings import Settings


@dataclass(frozen=True)
class SinkSpec:
    """One registered sink: its ``name``, the ``module`` holding its ``from_settings``, and ``configured``
    (whether these settings ask for it; it must not import the module)."""

    name: str
    module: str
    configured: Callable[[Settings], bool]

    def factory(self) -> SinkFactory:
        return cast("SinkFactory", importlib.import_module(self.module).from_settings)


SINKS: dict[str, SinkSpec] = {}


def register(name: str, module: str, configured: Callable[[Settings], bool]) -> SinkSpec:
    """Register a sink; a name registered twice is a programming error and raises ``ValueError``."""
    if name in SINKS:
        raise ValueError(f"an alert sink named {name!r} is already registered ({SINKS[name].module})")
    SINKS[name] = spec = SinkSpec(name, module, configured)
    return spec


def build_sinks(settings: Settings, *, timeout_s: float) -> dict[str, Sink]:
    """The configured sinks by name, in registration order (the order the router lists their targets)."""
    return {
        name: spec.factory()(settings, timeout_s=timeout_s) for name, spec in SINKS.items() if spec.configured(settings)
    }


register("slack", "txwatch.alerts.sinks.slack", lambda s: s.slack_token is not None or s.slack_webhook_url is not None)
register("webhook", "txwatch.alerts.sinks.webhook", lambda s: s.webhook_url is not None)
register("alertmanager", "txwatch.alerts.sinks.alertmanager", lambda s: bool(s.alertmanager_url))

__all__ = ["SINKS", "SinkSpec", "build_sinks", "register"]
