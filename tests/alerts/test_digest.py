"""The digest: a cron job spec for the scheduler, and a summary posted to Slack once per run of the job."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from tests.alerts.conftest import fire, make_run, rows, slack_settings
from txwatch.alerts import AlertConfigError, build_alerting
from txwatch.alerts.digest import cron_trigger
from txwatch.settings import Settings
from txwatch.store.models import Run

SATURDAY = datetime(2025, 11, 29, 12, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("expr,next_fire", [
    ("0 9 * * 1-5", datetime(2025, 12, 1, 9, 0, tzinfo=timezone.utc)),  # crontab 1-5 = Monday to Friday
    ("30 8 * * 0", datetime(2025, 11, 30, 8, 30, tzinfo=timezone.utc)),  # crontab 0 = Sunday
    ("0 */6 * * *", datetime(2025, 11, 29, 18, 0, tzinfo=timezone.utc)),
])
def test_cron_spec_follows_crontab_and_fits_apscheduler(expr, next_fire):
    spec = cron_trigger(expr)
    scheduler = BackgroundScheduler(timezone="UTC")
    job = scheduler.add_job(lambda: None, id="digest", **spec)
    assert job.trigger.get_next_fire_time(None, SATURDAY) == next_fire


@pytest.mark.parametrize("expr,message", [
    ("0 9 * *", "expected five fields"),
    ("61 9 * * *", "digest_cron '61 9 \\* \\* \\*'"),
])
def test_bad_cron_lines_are_refused_at_start(expr, message):
    with pytest.raises(AlertConfigError, match=message):
        build_alerting(Settings(slack_webhook_url="http://127.0.0.1:9/services/x/y/zzzzzz", digest_cron=expr), None)


def test_digest_needs_slack():
    with pytest.raises(AlertConfigError, match="digest_cron is set but Slack is not"):
        build_alerting(Settings(digest_cron="0 9 * * *"), None)


def test_no_digest_job_unless_configured(slack):
    assert build_alerting(slack_settings(slack), None).jobs() == []


def test_digest_summarizes_since_the_last_one_and_posts_once(sessions, slack, clock):
    alerting = build_alerting(slack_settings(slack, digest_cron="0 9 * * *"), sessions, clock=clock)
    [(job_id, job, spec)] = alerting.jobs()
    assert job_id == "txwatch.alerts.digest" and spec["trigger"] == "cron"
    now = clock()
    for name, status, end_reason, error in [("ok-1", "finished", "finished", None), ("boom", "crashed", "crashed", "ValueError"),
                                            ("oom-3", "crashed", "oom", "torch.OutOfMemoryError"), ("live", "running", None, None)]:
        run_id = make_run(sessions, name, "nlp")
        with sessions() as s, s.begin():
            r = s.get(Run, run_id)
            r.started = now - timedelta(hours=2)
            r.status, r.end_reason, r.error_type = status, end_reason, error
            r.error_message = "CUDA out of memory" if error else None
            r.ended = now - timedelta(hours=1) if end_reason else None
    fire(sessions, alerting, run="boom", project="nlp", at=now - timedelta(minutes=90))
    fire(sessions, alerting, run="live", project="nlp", rule_id="slow-training", severity="info",
         symptom="Input pipeline is slow", at=now - timedelta(minutes=30))
    alerting.dispatch_due()
    slack.messages.clear()

    assert job() is True
    assert job() is False  # a second collector running the same cron in the same minute
    [msg] = slack.top_level("C0ALERTS1")
    assert msg["text"].endswith("4 runs started, 1 finished, 2 crashed; 2 diagnoses raised.")
    blocks = msg["blocks"]
    assert blocks[0]["text"]["text"] == ":bar_chart: txwatch digest"
    assert [f["text"] for f in blocks[2]["fields"]] == ["*Runs started*\n4", "*Finished*\n1", "*Crashed*\n2", "*Diagnoses raised*\n2"]
    assert blocks[3]["text"]["text"] == ("*Crashed runs*\n• `nlp/boom`: ValueError: CUDA out of memory\n"
                                         "• `nlp/oom-3`: torch.OutOfMemoryError: CUDA out of memory")
    assert blocks[4]["text"]["text"] == ("*Diagnoses raised*\n:red_circle: `nlp/boom`: Loss became NaN (`loss-nonfinite`)\n"
                                         ":large_blue_circle: `nlp/live`: Input pipeline is slow (`slow-training`)")
    [digest_row] = rows(sessions, kind="digest")
    assert digest_row.status == "sent"

    # The next digest starts where this one ended.
    clock.advance(24 * 3600)
    fire(sessions, alerting, run="live", project="nlp", rule_id="overfitting", severity="warning", symptom="Overfitting")
    alerting.dispatch_due()
    assert job() is True
    latest = slack.top_level("C0ALERTS1")[-1]
    assert latest["text"].endswith("0 runs started, 0 finished, 0 crashed; 1 diagnoses raised.")
    alerting.close()
