"""A collector killed between deciding a notification and sending it (or in the middle of sending it) does not
lose it and does not send it twice: after the restart it is sent exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.alerts.conftest import rows, slack_settings
from tests.alerts.slack_standin import Reply
from txwatch.alerts import build_alerting

ROOT = Path(__file__).resolve().parents[2]
ALERTS = "C0ALERTS1"


def _alerting(sessions, slack):
    return build_alerting(slack_settings(slack), sessions)


def worker(db_url: str, slack, action: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.alerts.crash_worker", db_url, slack.base_url, action],
        cwd=ROOT, capture_output=True, text=True, timeout=60, **kw,
    )


@pytest.mark.slow
def test_killed_after_deciding_sends_exactly_once_after_restart(alerts_db, sessions, slack):
    db_url = alerts_db[0]
    died = worker(db_url, slack, "record-and-die")
    assert died.returncode == -signal.SIGKILL, died.stderr
    [row] = rows(sessions)
    assert row.status == "pending" and slack.calls("chat.postMessage") == []

    restarted = worker(db_url, slack, "dispatch")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip() == "1"
    assert _alerting(sessions, slack).dispatch_due() == 0  # and once only: nothing left for anyone
    assert len(slack.top_level(ALERTS)) == 1
    assert len(slack.calls("chat.postMessage")) == 1
    assert rows(sessions)[0].status == "sent"


@pytest.mark.slow
def test_killed_while_slack_held_the_answer_is_not_posted_twice(alerts_db, sessions, slack):
    """Slack got the post, the collector died before it heard back: the restarted one finds the message."""
    db_url = alerts_db[0]
    died = worker(db_url, slack, "record-and-die")
    assert died.returncode == -signal.SIGKILL
    slack.script("chat.postMessage", Reply(delay_s=30, perform=True))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.alerts.crash_worker", db_url, slack.base_url, "dispatch"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        slack.wait_for("chat.postMessage", 1, timeout_s=30)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    [row] = rows(sessions)
    assert row.status == "sending" and row.attempts == 1
    assert len(slack.top_level(ALERTS)) == 1  # the message exists; nobody recorded it

    assert _alerting(sessions, slack).dispatch_due() == 0  # the dead collector's claim has not expired yet
    late = worker(db_url, slack, "dispatch-late")
    assert late.returncode == 0, late.stderr
    assert late.stdout.strip() == "1"
    assert len(slack.calls("chat.postMessage")) == 1
    [msg] = slack.top_level(ALERTS)
    [row] = rows(sessions)
    assert row.status == "sent" and row.external_ref["ts"] == msg["ts"] and row.attempts == 2
