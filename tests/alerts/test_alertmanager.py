"""The Alertmanager sink: v2 alerts with the right labels and annotations, endsAt on resolve, refreshed while firing.
Against a recording stand-in, and against the real Alertmanager when it is installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import pytest

from tests.alerts.conftest import change, fire, rows
from tests.alerts.receiver import Receiver
from txwatch.alerts import build_alerting
from txwatch.alerts.silences import add_silence
from txwatch.settings import Settings

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def test_alerts_carry_labels_and_annotations(sessions, receiver, clock):
    alerting = build_alerting(Settings(alertmanager_url=receiver.url, public_url="https://tx.example.com"), sessions, clock=clock)
    diag = fire(sessions, alerting, rule_id="dead-layer", severity="warning", symptom="A layer stopped learning",
                layer="encoder.layer.5.intermediate.dense.weight", labels={"team": "ranking", "bad-key": "x"})
    assert alerting.dispatch_due() == 1
    [post] = receiver.received
    assert post.path == "/api/v2/alerts"
    [alert] = post.body
    assert alert["labels"] == {
        "alertname": "dead-layer", "rule": "dead-layer", "severity": "warning", "run": "bert-ft-42",
        "project": "search-ranking", "layer": "encoder.layer.5.intermediate.dense.weight", "source": "txwatch",
        "team": "ranking", "bad_key": "x",
    }
    assert alert["annotations"] == {
        "summary": "A layer stopped learning (search-ranking/bert-ft-42, step 412)",
        "symptom": "A layer stopped learning",
        "cause": "The learning rate is too high for this model: updates overshoot until values overflow.",
        "fix": "1. Lower the learning rate 10x\n2. Enable gradient clipping (max_norm=1.0)",
        "evidence": 'loss was nan at step 412 (a finite value is expected)\n{"grad_norm_total": 31000.0, "loss": "nan", "lr/0": 0.5}',
    }
    assert alert["generatorURL"] == "https://tx.example.com/runs/search-ranking/bert-ft-42"
    assert "endsAt" not in alert and alert["startsAt"].endswith("Z")

    # Still firing: the refresh job re-pushes it; silenced ones are left to expire.
    [(job_id, job, trigger)] = alerting.jobs()
    assert job_id == "txwatch.alerts.alertmanager-refresh" and trigger["trigger"] == "interval" and trigger["seconds"] == 60
    assert job() == 1
    assert receiver.received[-1].body[0]["labels"]["rule"] == "dead-layer"

    change(sessions, alerting, diag, "resolve", resolved_step=480)
    assert alerting.dispatch_due() == 1
    [resolved] = receiver.received[-1].body
    assert resolved["endsAt"].endswith("Z") and resolved["labels"] == alert["labels"]
    assert job() == 0  # nothing firing any more
    alerting.close()


def test_refresh_skips_silenced_diagnoses(sessions, receiver, clock):
    alerting = build_alerting(Settings(alertmanager_url=receiver.url), sessions, clock=clock)
    fire(sessions, alerting)
    alerting.dispatch_due()
    with sessions() as s, s.begin():
        add_silence(s, run="search-ranking/bert-ft-42", duration="1h")
    [(_, job, _)] = alerting.jobs()
    assert job() == 0
    alerting.close()


def test_a_refused_alert_fails_and_a_down_alertmanager_is_retried(sessions, receiver, clock):
    alerting = build_alerting(Settings(alertmanager_url=receiver.url), sessions, clock=clock)
    receiver.fail_next(400)
    fire(sessions, alerting)
    alerting.dispatch_due()
    assert rows(sessions)[0].status == "failed"
    assert "Alertmanager at 127.0.0.1 refused the notification with HTTP 400" in rows(sessions)[0].error
    alerting.close()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
@pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager is not installed (the Debian package)")
def test_a_real_alertmanager_receives_and_resolves_the_alert(sessions, clock, tmp_path):
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")
    port = _free_port()
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "Alertmanager did not start"
            time.sleep(0.2)
        alerting = build_alerting(Settings(alertmanager_url=url), sessions, clock=clock)
        diag = fire(sessions, alerting)
        assert alerting.dispatch_due() == 1
        [alert] = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
        assert alert["labels"]["alertname"] == "loss-nonfinite" and alert["labels"]["run"] == "bert-ft-42"
        assert alert["annotations"]["cause"].startswith("The learning rate is too high")
        assert alert["status"]["state"] == "active"
        change(sessions, alerting, diag, "resolve")
        assert alerting.dispatch_due() == 1
        assert httpx.get(f"{url}/api/v2/alerts", params={"active": "true"}, timeout=5).json() == []
        alerting.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
