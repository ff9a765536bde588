"""The Slack sink end to end: the real slack-sdk WebClient/WebhookClient against the local stand-in, driven through
the outbox and the dispatcher on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time

import pytest

from tests.alerts.conftest import change, fire, rows, slack_settings
from tests.alerts.slack_standin import Reply
from txwatch import telemetry
from txwatch.alerts import build_alerting
from txwatch.alerts.silences import add_silence

ALERTS = "C0ALERTS1"
URL = "https://txwatch.example.com/runs/search-ranking/bert-ft-42"
EVIDENCE = {"loss": "nan", "grad_norm_total": 31000.0, "lr/0": 0.5}


@pytest.fixture
def alerting_for(sessions, clock):
    built = []

    def make(settings, **kw):
        a = build_alerting(settings, sessions, clock=clock, **kw)
        built.append(a)
        return a

    yield make
    for a in built:
        a.close()


def test_a_fire_posts_one_message_a_person_can_act_on(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack, public_url="https://txwatch.example.com"))
    diag = fire(sessions, alerting, evidence=EVIDENCE)

    assert alerting.dispatch_due() == 1
    [msg] = slack.top_level(ALERTS)
    assert msg["text"] == (
        "[CRITICAL] Loss became NaN — search-ranking/bert-ft-42, step 412 (loss-nonfinite). Likely cause: The "
        "learning rate is too high for this model: updates overshoot until values overflow. Fix: 1) Lower the "
        "learning rate 10x; 2) Enable gradient clipping (max_norm=1.0)"
    )
    first_seen = rows(sessions)[0].payload["diagnosis"]["first_seen"].replace("T", " ")[:16]
    assert msg["blocks"] == [
        {"type": "header", "text": {"type": "plain_text", "text": ":red_circle: CRITICAL: Loss became NaN", "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text":
            f"*Run* <{URL}|bert-ft-42> · *Project* `search-ranking` · *Rule* `loss-nonfinite` · *Step* 412"}},
        {"type": "section", "text": {"type": "mrkdwn", "text":
            "*Likely cause*\nThe learning rate is too high for this model: updates overshoot until values overflow."}},
        {"type": "section", "text": {"type": "mrkdwn", "text":
            "*Fix*\n1. Lower the learning rate 10x\n2. Enable gradient clipping (max_norm=1.0)"}},
        {"type": "section", "text": {"type": "mrkdwn", "text":
            "*Evidence*\nloss was nan at step 412 (a finite value is expected)\n• *loss*: `nan`\n"
            "• *grad_norm_total*: `31000`\n• *lr/0*: `0.5`"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text":
            f"txwatch · first seen {first_seen} UTC · <{URL}|Open the run page>"}]},
    ]
    [row] = rows(sessions)
    assert row.status == "sent" and row.dedupe_key == f"slack:#alerts:{diag}:fire:1"
    assert row.external_ref == {"channel": ALERTS, "ts": msg["ts"], "group": [diag]}
    # Sent once: nothing more on the next rounds.
    assert alerting.dispatch_due() == 0
    assert len(slack.calls("chat.postMessage")) == 1


def test_updates_go_to_the_thread_no_more_often_than_the_repeat_interval(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack, repeat_interval_s=600))
    diag = fire(sessions, alerting, evidence={"loss": "nan"})
    alerting.dispatch_due()
    [parent] = slack.top_level(ALERTS)

    clock.advance(60)
    assert change(sessions, alerting, diag, "update", last_step=500) == 0  # inside the repeat interval
    clock.advance(600)
    # Shaped like the rule engine's updates: the latest figures, with the ones it fired with under "first".
    assert change(sessions, alerting, diag, "update", last_step=900, evidence={"loss": "nan", "first": {"loss": "nan"}}) == 1
    clock.advance(5)
    assert change(sessions, alerting, diag, "update", last_step=910) == 0
    assert alerting.dispatch_due() == 1

    [reply] = slack.thread(ALERTS, parent["ts"])
    assert reply["text"] == "Still firing at step 900: Loss became NaN (loss-nonfinite). loss was nan at step 412 (a finite value is expected)"
    assert reply["blocks"] == [{"type": "section", "text": {"type": "mrkdwn", "text":
        ":repeat: *Still firing* at step 900: Loss became NaN (`loss-nonfinite`)\n"
        "loss was nan at step 412 (a finite value is expected)\n• *loss*: `nan`"}}]
    assert len(slack.top_level(ALERTS)) == 1
    update_row = rows(sessions, kind="update")[0]
    assert update_row.dedupe_key == f"slack:#alerts:{diag}:update:1:1"
    assert update_row.external_ref == {"channel": ALERTS, "ts": reply["ts"], "thread_ts": parent["ts"]}


def test_resolve_edits_the_original_and_replies_in_its_thread(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack, slack_mention_critical="@here"))
    diag = fire(sessions, alerting, evidence={"loss": "nan"})
    alerting.dispatch_due()
    [parent] = slack.top_level(ALERTS)
    assert parent["text"].startswith("<!here> [CRITICAL]")

    clock.advance(30)
    resolution = {"loss": "nan", "resolution": {"loss": 2.1, "reason": "loss was finite for 50 steps"}}
    assert change(sessions, alerting, diag, "resolve", resolved_step=480, evidence=resolution) == 1
    assert alerting.dispatch_due() == 1

    [edit] = slack.calls("chat.update")
    assert edit.args["channel"] == ALERTS and edit.args["ts"] == parent["ts"]
    [edited] = slack.top_level(ALERTS)
    assert edited["edited"] is True
    assert edited["blocks"][0]["text"]["text"] == ":white_check_mark: RESOLVED: Loss became NaN"
    assert "<!here>" not in edited["text"] and "<!here>" not in edited["blocks"][1]["text"]["text"]
    assert edited["text"].startswith("[RESOLVED] Loss became NaN — search-ranking/bert-ft-42")
    assert edited["blocks"][-1]["elements"][0]["text"].startswith("txwatch · :white_check_mark: resolved at step 480")
    [reply] = slack.thread(ALERTS, parent["ts"])
    assert reply["text"] == "Resolved at step 480: Loss became NaN (loss-nonfinite). loss was finite for 50 steps"
    assert reply["blocks"][0]["text"]["text"] == (
        ":white_check_mark: *Resolved* at step 480: Loss became NaN (`loss-nonfinite`)\nloss was finite for 50 steps")


def test_rules_firing_together_on_one_run_become_one_message(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack, group_window_s=10))
    a = fire(sessions, alerting, rule_id="loss-diverging", severity="warning", symptom="Loss is diverging", step=300)
    clock.advance(3)
    b = fire(sessions, alerting, rule_id="gradient-explosion", symptom="Gradients exploded", step=305,
             layer="encoder.layer.0.attention.self.query.weight")
    clock.advance(3)
    other = fire(sessions, alerting, run="other-run", rule_id="slow-training", severity="info", symptom="Input pipeline is slow")
    clock.advance(3)
    assert alerting.dispatch_due() == 0  # still inside the first fire's group window
    clock.advance(1.5)
    assert alerting.dispatch_due() == 2  # both diagnoses of bert-ft-42, in one message; other-run waits
    [msg] = slack.top_level(ALERTS)
    assert msg["blocks"][0]["text"]["text"] == ":red_circle: CRITICAL: 2 problems in run bert-ft-42"
    items = [b_["text"]["text"] for b_ in msg["blocks"] if b_["type"] == "section"][1:]
    assert items[0].startswith(":large_orange_circle: *WARNING · Loss is diverging*  `loss-diverging` · step 300")
    assert items[1].startswith(
        ":red_circle: *CRITICAL · Gradients exploded*  `gradient-explosion` · step 305 · layer "
        "`encoder.layer.0.attention.self.query.weight`")
    assert "*Likely cause:* The learning rate is too high" in items[1] and "*Fix:* 1. Lower the learning rate 10x" in items[1]
    assert msg["text"].startswith("[CRITICAL] 2 problems in search-ranking/bert-ft-42: Loss is diverging (loss-diverging); Gradients exploded")
    refs = {r.diagnosis_id: r.external_ref for r in rows(sessions, kind="fire", status="sent")}
    assert refs[a] == refs[b] == {"channel": ALERTS, "ts": msg["ts"], "group": [a, b]}

    clock.advance(10)
    assert alerting.dispatch_due() == 1  # other-run's own message
    assert len(slack.top_level(ALERTS)) == 2

    # One of the group resolves: the grouped message shows that item resolved, the other still firing.
    change(sessions, alerting, b, "resolve", resolved_step=350)
    assert alerting.dispatch_due() == 1
    edited = next(m for m in slack.top_level(ALERTS) if m["ts"] == msg["ts"])
    items = [b_["text"]["text"] for b_ in edited["blocks"] if b_["type"] == "section"][1:]
    assert items[0].startswith(":large_orange_circle: *WARNING · Loss is diverging*")
    assert items[1].startswith(":white_check_mark: ~Gradients exploded~ — :white_check_mark: resolved at step 350")
    assert [r["text"] for r in slack.thread(ALERTS, msg["ts"])] == ["Resolved at step 350: Gradients exploded (gradient-explosion)."]
    # An update for the other member goes to the same thread.
    clock.advance(601)
    change(sessions, alerting, a, "update", last_step=700)
    assert alerting.dispatch_due() == 1
    assert [r["text"].split(":")[0] for r in slack.thread(ALERTS, msg["ts"])] == ["Resolved at step 350", "Still firing at step 700"]
    assert other


def test_a_diagnosis_that_joins_an_open_incident_is_a_reply_in_its_thread(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack, group_window_s=10))
    root = fire(sessions, alerting, rule_id="lr-jump", symptom="The learning rate jumped", step=150)
    clock.advance(11)
    assert alerting.dispatch_due() == 1
    [parent] = slack.top_level(ALERTS)
    clock.advance(60)  # well past the group window: the NaN that follows is part of the same incident
    nan = fire(sessions, alerting, rule_id="loss-nonfinite", symptom="Loss became NaN", step=157)
    assert alerting.dispatch_due() == 1
    assert len(slack.top_level(ALERTS)) == 1  # one Slack message per incident
    [reply] = slack.thread(ALERTS, parent["ts"])
    assert reply["text"].startswith("Also in this incident at step 157: Loss became NaN (loss-nonfinite).")
    # its follow-ups stay in that thread, and resolving it does not edit the incident's message
    change(sessions, alerting, nan, "resolve", resolved_step=200)
    assert alerting.dispatch_due() == 1
    assert not slack.calls("chat.update")
    assert [r["text"].split(":")[0] for r in slack.thread(ALERTS, parent["ts"])][-1] == "Resolved at step 200"
    # once the incident is over (resolved long before), a new diagnosis opens a message of its own
    change(sessions, alerting, root, "resolve", resolved_step=250)
    alerting.dispatch_due()
    clock.advance(60)
    fire(sessions, alerting, rule_id="overfitting", symptom="Overfitting", severity="warning", step=900)
    clock.advance(11)
    assert alerting.dispatch_due() == 1
    assert len(slack.top_level(ALERTS)) == 2


def test_routes_pick_channels_and_critical_ones_mention(sessions, slack, clock, alerting_for):
    routes = [
        {"severity": "critical", "channel": "#oncall", "continue": True},
        {"project": "search-*", "channel": "#search"},
        {"labels": {"team": "vision"}, "channel": "#search", "mention": "<!subteam^S0VISION>"},
    ]
    alerting = alerting_for(slack_settings(slack, slack_routes=routes, slack_mention_critical="@here"))
    fire(sessions, alerting)  # critical, search-ranking -> #oncall and #search, both mentioning @here
    fire(sessions, alerting, project="vision", run="vit-7", severity="warning", labels={"team": "nlp"})  # -> default
    fire(sessions, alerting, project="vision", run="vit-8", labels={"team": "vision"})  # critical: oncall + route mention
    assert alerting.dispatch_due() == 5

    oncall = slack.top_level("C0ONCALL1")
    search = slack.top_level("C0SEARCH1")
    default = slack.top_level(ALERTS)
    assert [m["text"].split(" ")[0] for m in oncall] == ["<!here>", "<!here>"]
    # vit-8 is critical: #oncall (continue: true) with the global mention, then the labels route with its own.
    assert [m["text"].split(" ")[0] for m in search] == ["<!here>", "<!subteam^S0VISION>"]
    assert default[0]["text"].startswith("[WARNING] Loss became NaN — vision/vit-7")
    assert "<!" not in default[0]["text"] and not default[0]["blocks"][1]["text"]["text"].startswith("<!")
    assert oncall[0]["blocks"][1]["text"]["text"].startswith("<!here> *Run* `bert-ft-42`")
    targets = sorted((r.target, r.payload["run"]["name"]) for r in rows(sessions))
    assert targets == [("#alerts", "vit-7"), ("#oncall", "bert-ft-42"), ("#oncall", "vit-8"), ("#search", "bert-ft-42"),
                       ("#search", "vit-8")]


def test_silenced_diagnoses_are_recorded_but_not_sent(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack))
    with sessions() as s, s.begin():
        add_silence(s, run="search-ranking/bert-ft-42", rule="loss-nonfinite", duration="2h", now=clock())
    silenced = fire(sessions, alerting)
    other_rule = fire(sessions, alerting, rule_id="loss-diverging", symptom="Loss is diverging")
    assert alerting.dispatch_due() == 1
    [msg] = slack.top_level(ALERTS)
    assert "Loss is diverging" in msg["text"]
    [row] = rows(sessions, diagnosis_id=silenced)
    assert row.status == "silenced" and row.error.startswith("silenced by silence #")
    # The resolve of an episode nobody was told about is not sent either.
    change(sessions, alerting, silenced, "resolve")
    assert alerting.dispatch_due() == 0
    assert slack.calls("chat.update") == []
    # A silence added after the notification was decided but before it went out still stops it.
    late = fire(sessions, alerting, run="run-2")
    with sessions() as s, s.begin():
        add_silence(s, run="run-2", duration="30m", now=clock())
    assert alerting.dispatch_due() == 0
    assert rows(sessions, diagnosis_id=late)[0].status == "silenced"
    assert other_rule
    # When the silence ends, later updates are posted as a new message (there is no thread to reply in).
    clock.advance(3 * 3600)
    change(sessions, alerting, silenced, "update", state="firing", last_step=2000)
    assert alerting.dispatch_due() == 1
    latest = slack.top_level(ALERTS)[-1]
    assert latest["blocks"][0]["text"]["text"] == ":red_circle: CRITICAL: Loss became NaN"
    assert ":repeat: still firing at step 2000" in latest["blocks"][-1]["elements"][0]["text"]


def test_a_short_rate_limit_is_waited_out_with_retry_after(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack))
    slack.script("chat.postMessage", Reply(status=429, headers={"Retry-After": "1"}, body={"ok": False, "error": "ratelimited"}))
    fire(sessions, alerting)
    assert alerting.dispatch_due() == 1
    first, second = slack.calls("chat.postMessage")
    assert second.at - first.at >= 1.0  # slack-sdk's RateLimitErrorRetryHandler honoured Retry-After
    assert len(slack.top_level(ALERTS)) == 1


def test_a_long_rate_limit_goes_back_to_the_outbox_until_retry_after(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack))
    before = telemetry.value(telemetry.ALERTS_RETRIED, sink="slack", reason="ratelimited")
    slack.script("chat.postMessage", Reply(status=429, headers={"Retry-After": "120"}, body={"ok": False, "error": "ratelimited"}))
    fire(sessions, alerting)
    started = time.monotonic()
    assert alerting.dispatch_due() == 0
    assert time.monotonic() - started < 60  # did not sit out two minutes inside the call
    [row] = rows(sessions)
    assert row.status == "pending" and "rate limit" in row.error
    assert (row.next_attempt.replace(tzinfo=None) - clock().replace(tzinfo=None)).total_seconds() == pytest.approx(120, abs=1)
    assert telemetry.value(telemetry.ALERTS_RETRIED, sink="slack", reason="ratelimited") == before + 1
    clock.advance(60)
    assert alerting.dispatch_due() == 0
    clock.advance(61)
    assert alerting.dispatch_due() == 1
    assert len(slack.top_level(ALERTS)) == 1


def test_server_errors_are_retried_with_backoff(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack))
    slack.script("chat.postMessage", Reply(status=500), Reply(status=500))
    fire(sessions, alerting)
    assert alerting.dispatch_due() == 1  # slack-sdk's ServerErrorRetryHandler: two retries inside the call
    assert len(slack.calls("chat.postMessage")) == 3

    slack.script("chat.postMessage", Reply(status=502))  # not one slack-sdk retries: back to the outbox
    fire(sessions, alerting, run="run-2")
    assert alerting.dispatch_due() == 0
    row = rows(sessions)[-1]
    assert row.status == "pending" and row.attempts == 1 and "HTTP 502" in row.error
    clock.advance(14)
    assert alerting.dispatch_due() == 0  # backoff: 15 s after the first attempt
    clock.advance(2)
    assert alerting.dispatch_due() == 1
    assert len(slack.top_level(ALERTS)) == 2


@pytest.mark.parametrize("channel", ["C0ALERTS1", "#alerts"])
def test_a_timed_out_post_is_found_not_posted_twice(sessions, slack, clock, alerting_for, channel):
    """The request reached Slack but the answer was lost: the retry finds the message by its metadata."""
    alerting = alerting_for(slack_settings(slack, slack_channel=channel), timeout_s=1.0)
    slack.script("chat.postMessage", Reply(delay_s=2.5, perform=True))
    diag = fire(sessions, alerting)
    assert alerting.dispatch_due() == 0
    [row] = rows(sessions)
    assert row.status == "pending" and row.attempts == 1 and "no answer from Slack within 1s" in row.error
    clock.advance(16)
    assert alerting.dispatch_due() == 1
    [msg] = slack.top_level(ALERTS)
    assert len(slack.calls("chat.postMessage")) == 1
    assert len(slack.calls("conversations.history")) == 1
    [row] = rows(sessions)
    assert row.status == "sent" and row.external_ref == {"channel": ALERTS, "ts": msg["ts"], "group": [diag]}
    # The thread still works off the found message.
    clock.advance(700)
    change(sessions, alerting, diag, "update", last_step=999)
    assert alerting.dispatch_due() == 1
    assert len(slack.thread(ALERTS, msg["ts"])) == 1


def test_a_timed_out_thread_reply_is_not_posted_twice(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack), timeout_s=1.0)
    diag = fire(sessions, alerting)
    alerting.dispatch_due()
    [parent] = slack.top_level(ALERTS)
    slack.script("chat.postMessage", Reply(delay_s=2.5, perform=True))
    change(sessions, alerting, diag, "resolve")
    assert alerting.dispatch_due() == 0
    clock.advance(20)
    assert alerting.dispatch_due() == 1
    assert len(slack.thread(ALERTS, parent["ts"])) == 1
    assert len(slack.calls("conversations.replies")) == 1


def test_a_bad_token_fails_once_with_a_clear_reason_and_is_not_retried(sessions, slack, clock, alerting_for, caplog):
    alerting = alerting_for(slack_settings(slack, slack_token="xoxb-wrong-token-000"))
    before = telemetry.value(telemetry.ALERTS_FAILED, sink="slack", reason="invalid_auth")
    fire(sessions, alerting)
    fire(sessions, alerting, run="run-2")
    with caplog.at_level(logging.INFO, logger="txwatch"):
        assert alerting.dispatch_due() == 0
    for row in rows(sessions):
        assert row.status == "failed"
        assert row.error.startswith("Slack rejected the bot token (invalid_auth): check TXWATCH_SLACK_TOKEN")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("txwatch.alerts")]
    assert len(errors) == 1 and "invalid_auth" in errors[0].getMessage()
    assert telemetry.value(telemetry.ALERTS_FAILED, sink="slack", reason="invalid_auth") == before + 2
    calls = len(slack.calls("chat.postMessage"))
    assert calls == 2
    clock.advance(24 * 3600)
    assert alerting.dispatch_due() == 0
    assert len(slack.calls("chat.postMessage")) == calls  # never retried


def test_an_unknown_channel_fails_with_the_channel_named(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack, slack_channel="#no-such-channel"))
    fire(sessions, alerting)
    alerting.dispatch_due()
    [row] = rows(sessions)
    assert row.status == "failed"
    assert row.error.startswith("Slack channel #no-such-channel was not found (channel_not_found)")
    assert telemetry.value(telemetry.ALERTS_FAILED, sink="slack", reason="channel_not_found") >= 1


def test_incoming_webhook_mode_posts_fire_update_and_resolve_as_messages(sessions, slack, clock, alerting_for):
    alerting = alerting_for(slack_settings(slack, slack_token=None, slack_channel=None, slack_webhook_url=slack.webhook_url))
    diag = fire(sessions, alerting)
    assert alerting.dispatch_due() == 1
    clock.advance(601)
    change(sessions, alerting, diag, "update", last_step=800)
    change(sessions, alerting, diag, "resolve", resolved_step=900)
    assert alerting.dispatch_due() == 2
    fired, updated, resolved = slack.webhook_messages
    assert fired["blocks"][0]["text"]["text"] == ":red_circle: CRITICAL: Loss became NaN"
    assert ":repeat: still firing at step 800" in updated["blocks"][-1]["elements"][0]["text"]
    assert resolved["blocks"][0]["text"]["text"] == ":white_check_mark: RESOLVED: Loss became NaN"
    assert [r.external_ref for r in rows(sessions)] == [{"webhook": True, "group": [diag]}, {"webhook": True, "group": [diag]}, {"webhook": True}]


def test_a_revoked_incoming_webhook_fails_clearly(sessions, slack, clock, alerting_for):
    url = slack.webhook_url.replace("webhooksecretXYZ123", "revokedsecret999")
    alerting = alerting_for(slack_settings(slack, slack_token=None, slack_channel=None, slack_webhook_url=url))
    fire(sessions, alerting)
    alerting.dispatch_due()
    [row] = rows(sessions)
    assert row.status == "failed"
    assert row.error.startswith("the Slack incoming webhook no longer exists (no_service)")
    assert "revokedsecret999" not in row.error


def test_without_the_history_scope_a_timed_out_post_is_retried_with_one_clear_warning(
        sessions, slack, clock, alerting_for, caplog):
    """A bot token lacking channels:history cannot look for the message a lost answer may have posted: the
    retry posts (a duplicate is possible) and the log says once which scope would prevent it."""
    alerting = alerting_for(slack_settings(slack), timeout_s=1.0)
    slack.script("chat.postMessage", Reply(delay_s=2.5, perform=True))
    refused = Reply(body={"ok": False, "error": "missing_scope", "needed": "channels:history"})
    slack.script("conversations.history", refused)
    fire(sessions, alerting)
    assert alerting.dispatch_due() == 0
    clock.advance(16)
    assert alerting.dispatch_due() == 1  # posted again without the lookup
    assert len(slack.calls("conversations.history")) == 1
    assert len(slack.calls("chat.postMessage")) == 2 and len(slack.top_level(ALERTS)) == 2  # the duplicate
    warnings = [r.getMessage() for r in caplog.records if "channels:history" in r.getMessage()]
    assert len(warnings) == 1 and "missing_scope" in warnings[0], warnings
    [row] = rows(sessions)
    assert row.status == "sent"
