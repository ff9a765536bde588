"""The generic JSON webhook sink posts the documented payload, retries passing failures, gives up on refusals."""

from __future__ import annotations

import pytest

from tests.alerts.conftest import change, fire, rows
from tests.alerts.receiver import Receiver
from txwatch.alerts import build_alerting
from txwatch.settings import Settings


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def test_webhook_posts_the_documented_payload(sessions, receiver, clock):
    alerting = build_alerting(Settings(webhook_url=f"{receiver.url}/hooks/txwatch", public_url="https://tx.example.com"),
                              sessions, clock=clock)
    diag = fire(sessions, alerting, layer="encoder.layer.3.output.dense.weight")
    change(sessions, alerting, diag, "resolve", resolved_step=500)
    assert alerting.dispatch_due() == 2
    fired, resolved = receiver.received
    assert fired.path == "/hooks/txwatch"
    assert fired.headers["idempotency-key"] == f"webhook:default:{diag}:fire:1"
    body = fired.body
    assert set(body) == {"version", "kind", "dedupe_key", "sent_at", "diagnosis", "run"}
    assert body["version"] == 1 and body["kind"] == "fire" and body["dedupe_key"] == f"webhook:default:{diag}:fire:1"
    assert body["run"] == {"name": "bert-ft-42", "project": "search-ranking",
                           "url": "https://tx.example.com/runs/search-ranking/bert-ft-42"}
    d = body["diagnosis"]
    assert set(d) == {"id", "rule", "severity", "state", "episode", "layer", "symptom", "cause", "fix", "reason",
                      "evidence", "labels", "first_step", "last_step", "resolved_step", "first_seen", "last_seen",
                      "resolved_at"}
    assert {k: d[k] for k in ("id", "rule", "severity", "state", "episode", "layer", "symptom", "fix", "first_step")} == {
        "id": diag, "rule": "loss-nonfinite", "severity": "critical", "state": "firing", "episode": 1,
        "layer": "encoder.layer.3.output.dense.weight", "symptom": "Loss became NaN",
        "fix": ["Lower the learning rate 10x", "Enable gradient clipping (max_norm=1.0)"], "first_step": 412}
    assert d["evidence"] == {"loss": "nan", "grad_norm_total": 31000.0, "lr/0": 0.5}
    assert d["first_seen"].endswith("Z") and d["resolved_at"] is None
    assert resolved.body["kind"] == "resolve" and resolved.body["diagnosis"]["state"] == "resolved"
    assert resolved.body["diagnosis"]["resolved_step"] == 500
    alerting.close()


def test_webhook_retries_server_errors_and_gives_up_on_refusals(sessions, receiver, clock):
    alerting = build_alerting(Settings(webhook_url=receiver.url), sessions, clock=clock)
    receiver.fail_next(503)
    fire(sessions, alerting)
    assert alerting.dispatch_due() == 0
    [row] = rows(sessions)
    assert row.status == "pending" and row.error.startswith("the webhook answered HTTP 503")
    clock.advance(15)
    assert alerting.dispatch_due() == 1

    receiver.fail_next(400)
    fire(sessions, alerting, run="run-2")
    assert alerting.dispatch_due() == 0
    row = rows(sessions)[-1]
    assert row.status == "failed"
    assert row.error.startswith("the webhook at 127.0.0.1 refused the notification with HTTP 400")
    alerting.close()
