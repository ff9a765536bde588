"""The Slack token and webhook URLs never reach a log line, a stored error, or a traceback, even with every logger
(slack-sdk's own included) at DEBUG and through invalid_auth, 500s, timeouts, refused connections and sink bugs."""

from __future__ import annotations

import logging
import socket

import pytest

from tests.alerts.conftest import fire, rows, slack_settings
from tests.alerts.slack_standin import TOKEN, Reply
from txwatch.alerts import blocks, build_alerting

WRONG_TOKEN = "xoxb-9999-wrong-token-LEAKCHECK"
HOOK_SECRET = "webhooksecretXYZ123"
GENERIC_SECRET = "generic-hook-secret-777"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def everything_at_debug(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("slack_sdk", "slack_sdk.web.base_client", "slack_sdk.webhook.client", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def sdk_debug_on(caplog):
    """What a user debugging txwatch might do: turn the Slack client's own logger to DEBUG (request dumps)."""
    caplog.set_level(logging.DEBUG, logger="txwatch.alerts.slack.sdk")


def _assert_clean(caplog, capfd, sessions, secrets):
    seen = []
    for rec in caplog.records:
        seen.append(rec.getMessage())
        if rec.exc_text:
            seen.append(rec.exc_text)
        if rec.exc_info:
            seen.append(logging.Formatter().formatException(rec.exc_info))
    seen.append(caplog.text)
    out, err = capfd.readouterr()
    seen.extend([out, err])
    seen.extend(str(r.error) for r in rows(sessions))
    seen.extend(str(r.external_ref) for r in rows(sessions))
    blob = "\n".join(seen)
    for secret in secrets:
        assert secret not in blob
    return blob


def test_slack_token_never_logged_through_failures(sessions, slack, clock, everything_at_debug, capfd, monkeypatch):
    caplog = everything_at_debug
    good = build_alerting(slack_settings(slack), sessions, clock=clock, timeout_s=1.0)
    bad = build_alerting(slack_settings(slack, slack_token=WRONG_TOKEN), sessions, clock=clock)
    refused = build_alerting(slack_settings(slack, slack_base_url=f"http://127.0.0.1:{_closed_port()}/api/"), sessions, clock=clock)
    sdk_debug_on(caplog)
    try:
        fire(sessions, good)
        slack.script("chat.postMessage", *[Reply(status=500)] * 3)
        good.dispatch_due()  # three 500s: retried inside slack-sdk, then backed off
        clock.advance(20)
        slack.script("chat.postMessage", Reply(delay_s=2.0, perform=True))
        good.dispatch_due()  # timeout
        clock.advance(40)
        good.dispatch_due()  # looks the message up (conversations.history), records it
        fire(sessions, good, run="run-2")
        bad.dispatch_due()  # invalid_auth with the wrong token
        fire(sessions, refused, run="run-3")
        refused.dispatch_due()  # connection refused, retried by slack-sdk's ConnectionErrorRetryHandler

        def broken(*a, **k):
            raise RuntimeError(f"renderer bug near Bearer {TOKEN}")

        monkeypatch.setattr(blocks, "group_message", broken)
        fire(sessions, good, run="run-4")
        clock.advance(3600)
        good.dispatch_due()  # a sink bug: logged with its traceback, masked
    finally:
        for a in (good, bad, refused):
            a.close()

    blob = _assert_clean(caplog, capfd, sessions, [TOKEN, WRONG_TOKEN, TOKEN.split("-", 1)[1]])
    # The failures really happened and were reported (so the check above looked at real messages).
    assert "invalid_auth" in blob and "HTTP 500" in blob and "no answer from Slack" in blob
    assert "could not reach Slack" in blob and "renderer bug near Bearer ***" in blob
    # slack-sdk's request/response dumps were emitted (and masked): the check covered them too.
    assert any(r.name == "txwatch.alerts.slack.sdk" and "Sending a request" in r.getMessage() for r in caplog.records)
    statuses = sorted(r.status for r in rows(sessions))
    assert statuses.count("failed") == 1 and "sent" in statuses


def test_webhook_urls_never_logged_through_failures(sessions, slack, clock, everything_at_debug, capfd):
    caplog = everything_at_debug
    port = _closed_port()
    hook = build_alerting(slack_settings(slack, slack_token=None, slack_channel=None, slack_webhook_url=slack.webhook_url),
                          sessions, clock=clock, timeout_s=1.0)
    generic = build_alerting(
        slack_settings(slack, slack_token=None, slack_channel=None,
                       webhook_url=f"http://127.0.0.1:{port}/hook?token={GENERIC_SECRET}"),
        sessions, clock=clock, timeout_s=1.0,
    )
    sdk_debug_on(caplog)
    try:
        slack.script("webhook", *[Reply(status=500, body="server_error")] * 3)
        fire(sessions, hook)
        hook.dispatch_due()
        clock.advance(20)
        slack.script("webhook", Reply(delay_s=2.0, perform=True))
        hook.dispatch_due()
        fire(sessions, generic, run="run-2")
        generic.dispatch_due()  # connection refused
    finally:
        hook.close()
        generic.close()
    blob = _assert_clean(caplog, capfd, sessions, [HOOK_SECRET, GENERIC_SECRET, slack.webhook_url])
    assert "HTTP 500" in blob and "could not reach the webhook at 127.0.0.1" in blob
    assert any(r.name == "txwatch.alerts.slack.sdk" and "Sending a request - url: ***" in r.getMessage() for r in caplog.records)
