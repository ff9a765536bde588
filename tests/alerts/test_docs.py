"""docs/alerts.md's rendered Slack example is what txwatch actually sends for its webhook-payload example."""

from __future__ import annotations

import json
import re
from pathlib import Path

from txwatch.alerts.sinks.alertmanager import alert_for
from txwatch.alerts.blocks import single_message

DOC = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def example(name: str):
    match = re.search(rf"<!-- example: {name} -->\n```json\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"docs/alerts.md lost its {name} example"
    return json.loads(match.group(1))


def test_documented_slack_message_matches_the_renderer():
    payload = example("webhook-payload")
    text, blocks = single_message(payload, "<!here>")
    assert example("slack-message") == {"text": text, "blocks": blocks}


def test_documented_webhook_payload_has_the_fields_the_sink_sends():
    payload = example("webhook-payload")
    # the same keys test_webhook.py sees arrive at a receiver
    assert set(payload) == {"version", "kind", "dedupe_key", "sent_at", "diagnosis", "run"}
    assert set(payload["diagnosis"]) == {
        "id", "rule", "severity", "state", "episode", "layer", "symptom", "cause", "fix", "reason", "evidence",
        "labels", "first_step", "last_step", "resolved_step", "first_seen", "last_seen", "resolved_at"}


def test_documented_alertmanager_alert_matches():
    doc = DOC.read_text()
    alert = alert_for(example("webhook-payload"), "fire")
    for key, value in alert["labels"].items():
        assert f'"{key}": "{value}"' in doc
    assert json.dumps(alert["annotations"]["evidence"]) in doc
