"""Prometheus counters for notifications, on the collector's registry (``/metrics``).

Reasons are short fixed codes (``invalid_auth``, ``http_500``, ``timeout``...) so label cardinality stays small.
"""

from __future__ import annotations

from prometheus_client import Counter

from txwatch.telemetry import REGISTRY

SENT = Counter(
    "txwatch_alerts_sent",
    "Notifications delivered, by sink.",
    ["sink"],
    registry=REGISTRY,
)
FAILED = Counter(
    "txwatch_alerts_failed",
    "Notifications given up on (never retried again), by sink and reason.",
    ["sink", "reason"],
    registry=REGISTRY,
)
RETRIED = Counter(
    "txwatch_alerts_retried",
    "Send attempts that failed for a passing reason and will be retried, by sink and reason.",
    ["sink", "reason"],
    registry=REGISTRY,
)
SILENCED = Counter(
    "txwatch_alerts_silenced",
    "Notifications recorded but not sent because a silence matched, by sink.",
    ["sink"],
    registry=REGISTRY,
)


def value(counter: Counter, **labels: str) -> float:
    """The current value of one labelled counter (0 when never incremented); for tests and the CLI."""
    sample = REGISTRY.get_sample_value(f"{counter._name}_total", labels)  # noqa: SLF001
    return 0.0 if sample is None else sample
