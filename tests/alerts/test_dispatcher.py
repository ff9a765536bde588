"""The dispatcher: two collectors dispatching from one database send each notification once; retries back off
and end; a sink bug does not lose notifications."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import pytest

from tests.alerts.conftest import fire, rows, slack_settings
from tests.alerts.slack_standin import Reply
from txwatch.alerts import build_alerting
from txwatch.alerts.dispatcher import MAX_ATTEMPTS, backoff_s
from txwatch.settings import Settings

ALERTS = "C0ALERTS1"


def test_two_collectors_dispatching_at_once_send_each_notification_once(sessions, slack):
    first = build_alerting(slack_settings(slack), sessions)
    second = build_alerting(slack_settings(slack), sessions)
    ids = [fire(sessions, first if i % 2 else second, run=f"run-{i}") for i in range(12)]
    # Slow Slack down a little so both dispatchers are mid-send at the same time.
    slack.script("chat.postMessage", *[Reply(delay_s=0.05, perform=True)] * 12)
    start = threading.Barrier(2)
    sent: list[int] = []

    def run(alerting):
        start.wait()
        sent.append(alerting.dispatch_due())

    threads = [threading.Thread(target=run, args=(a,)) for a in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(sent) == 12
    keys = Counter(m["metadata"]["event_payload"]["dedupe_keys"] for m in slack.top_level(ALERTS))
    assert len(keys) == 12 and set(keys.values()) == {1}
    assert sorted(r.diagnosis_id for r in rows(sessions, status="sent")) == sorted(ids)
    first.close()
    second.close()


def test_retries_back_off_and_then_stop_with_the_last_error(sessions, slack, clock):
    alerting = build_alerting(slack_settings(slack), sessions, clock=clock)
    slack.script("chat.postMessage", *[Reply(status=502)] * (MAX_ATTEMPTS + 2))  # 502: not retried inside slack-sdk
    fire(sessions, alerting)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert alerting.dispatch_due() == 0
        [row] = rows(sessions)
        assert row.attempts == attempt
        if attempt < MAX_ATTEMPTS:
            assert row.status == "pending"
            clock.advance(backoff_s(attempt) - 1)
            assert alerting.dispatch_due() == 0 and rows(sessions)[0].attempts == attempt  # not yet
            clock.advance(1)
    [row] = rows(sessions)
    assert row.status == "failed"
    assert row.error == f"gave up after {MAX_ATTEMPTS} attempts; last error: Slack answered HTTP 502; retrying with backoff"
    assert len(slack.calls("chat.postMessage")) == MAX_ATTEMPTS
    clock.advance(10 * 24 * 3600)
    assert alerting.dispatch_due() == 0
    assert len(slack.calls("chat.postMessage")) == MAX_ATTEMPTS
    alerting.close()


def test_a_sink_that_raises_keeps_the_notification_for_later(sessions, slack, clock, monkeypatch, caplog):
    alerting = build_alerting(slack_settings(slack), sessions, clock=clock)
    sink = alerting.sinks["slack"]
    real = sink.deliver
    monkeypatch.setattr(sink, "deliver", lambda rows_, ledger: 1 / 0)
    fire(sessions, alerting)
    assert alerting.dispatch_due() == 0
    [row] = rows(sessions)
    assert row.status == "pending" and row.error == "ZeroDivisionError: division by zero"
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text
    monkeypatch.setattr(sink, "deliver", real)
    clock.advance(backoff_s(1))
    assert alerting.dispatch_due() == 1
    assert len(slack.top_level(ALERTS)) == 1
    alerting.close()


@pytest.mark.parametrize("attempts,expected", [(1, 15), (2, 30), (5, 240), (20, 1800)])
def test_backoff_doubles_up_to_a_cap(attempts, expected):
    assert backoff_s(attempts) == expected


def test_a_database_outage_is_reported_once_and_dispatch_carries_on(db_url, caplog):
    from txwatch.store.db import make_engine, session_factory

    engine = make_engine(db_url)  # not migrated: every query fails
    alerting = build_alerting(Settings(webhook_url="http://127.0.0.1:9/hook"), session_factory(engine))
    with caplog.at_level(logging.ERROR, logger="txwatch.alerts"):
        assert alerting.dispatch_due() == 0
        assert alerting.dispatch_due() == 0
    [record] = caplog.records
    assert record.getMessage().startswith("cannot dispatch notifications: database error")
    assert "notifications" in record.getMessage()  # names the missing table
    alerting.close()
    engine.dispose()
