"""Alerts wired to the real collector and rule engine (``build_services``): a NaN loss ingested over the normal
path ends up as one Slack message, and recovering from it edits that message and replies in its thread."""

from __future__ import annotations

from tests.alerts.slack_standin import TOKEN
from tests.collector.batches import batch, steps
from txwatch.wire.batch import Batch
from txwatch.collector.services import build_services
from txwatch.settings import Settings


def test_a_nan_loss_reaches_slack_and_its_recovery_resolves_it(alerts_db, slack):
    settings = Settings(db_url=alerts_db[0], slack_token=TOKEN, slack_channel="#alerts", slack_base_url=slack.base_url,
                        group_window_s=0, public_url="http://txwatch.test")
    lines: list[str] = []
    services = build_services(settings, console=lambda text, payload: lines.append(text))
    try:
        nan_from_40 = steps("loss", 0, 50, lambda s: 2.0 if s < 40 else float("nan"))
        services.collector.ingest(Batch.model_validate(batch(run="nan-run", project="demo", seq=0, series=nan_from_40,
                                                             events=[{"kind": "start", "time": 1_764_393_000.0}])))
        assert services.alerting.dispatch_due() == 1
        [msg] = slack.top_level("C0ALERTS1")
        assert msg["text"].startswith("[CRITICAL] ") and "demo/nan-run, step 40 (loss-nonfinite)" in msg["text"]
        assert msg["blocks"][1]["text"]["text"].startswith("*Run* <http://txwatch.test/runs/demo/nan-run|nan-run>")
        assert lines and lines[0].startswith("[CRITICAL] demo/nan-run step 40: ")

        recovered = steps("loss", 50, 400, lambda s: 2.0 - s / 1000)
        services.collector.ingest(Batch.model_validate(batch(run="nan-run", project="demo", seq=1, series=recovered)))
        assert services.alerting.dispatch_due() == 1
        [edited] = slack.top_level("C0ALERTS1")
        assert edited["edited"] and edited["blocks"][0]["text"]["text"].startswith(":white_check_mark: RESOLVED: ")
        [reply] = slack.thread("C0ALERTS1", msg["ts"])
        assert reply["text"].startswith("Resolved at step ")
        assert lines[-1].startswith("[RESOLVED] demo/nan-run step ")
    finally:
        services.close()
