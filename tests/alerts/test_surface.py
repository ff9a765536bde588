"""The alerts package's public surface, and that Slack and APScheduler stay at its edge."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import generate_latest

import txwatch.alerts
from txwatch import telemetry
from txwatch.telemetry import REGISTRY


def test_public_surface():
    assert sorted(txwatch.alerts.__all__) == sorted(
        ["AlertConfigError", "Alerting", "ConsoleSink", "Outbox", "build_alerting"])
    for name in ("dispatch_due", "jobs", "close"):
        assert callable(getattr(txwatch.alerts.Alerting, name))


def test_importing_alerts_loads_no_slack_or_scheduler():
    code = ("import sys, txwatch.alerts, txwatch.api.silences; "
            "print(sorted(m for m in ('slack_sdk', 'apscheduler') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_counters_are_on_the_collector_registry():
    telemetry.ALERTS_SENT.labels(sink="surface-test").inc()
    telemetry.ALERTS_FAILED.labels(sink="surface-test", reason="invalid_auth").inc()
    text = generate_latest(REGISTRY).decode()
    assert 'txwatch_alerts_sent_total{sink="surface-test"} 1.0' in text
    assert 'txwatch_alerts_failed_total{reason="invalid_auth",sink="surface-test"} 1.0' in text
    assert "# HELP txwatch_alerts_retried_total" in text and "# HELP txwatch_alerts_silenced_total" in text
