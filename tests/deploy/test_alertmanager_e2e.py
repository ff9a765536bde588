"""A diagnosis pushed through txwatch's Alertmanager sink into a real Alertmanager (Debian's
prometheus-alertmanager on loopback, clustering off) running deploy/alertmanager/alertmanager.yml, read back from
Alertmanager's /api/v2/alerts with its labels and annotations, routed by the shipped configuration."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone

import httpx
import pytest
from sqlalchemy import select

from tests.deploy.conftest import DEPLOY
from tests.deploy.feed import nan_run_batches, post

pytestmark = pytest.mark.slow

WAIT_S = 45.0
TOKEN = "deploy-am-token-not-a-secret"


@pytest.fixture
def alertmanager(start_alertmanager, tmp_path):
    """Alertmanager running the shipped configuration, unchanged."""
    config = tmp_path / "alertmanager.yml"
    shutil.copy(DEPLOY / "alertmanager" / "alertmanager.yml", config)
    return start_alertmanager(config)


def am_alerts(alertmanager, **filters: str) -> list[dict]:
    params = [("filter", f'{k}="{v}"') for k, v in filters.items()]
    r = httpx.get(f"{alertmanager.url}/api/v2/alerts", params=params, timeout=10.0)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_alerts(alertmanager, what: str, predicate=bool, **filters: str) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        alerts = am_alerts(alertmanager, **filters)
        if predicate(alerts):
            return alerts
        time.sleep(0.25)
    pytest.fail(f"Alertmanager never showed {what} ({filters}); it has: {am_alerts(alertmanager)}\n"
                f"alertmanager log:\n{alertmanager.log()}")


def _store_run_and_diagnoses(session, project: str, run: str):
    """A run with a critical diagnosis (loss-nonfinite) and a warning one (loss-oscillating), both firing."""
    from txwatch.store.models import Diagnosis, Project, Run

    now = datetime.now(timezone.utc)
    p = Project(name=project, created=now)
    session.add(p)
    session.flush()
    r = Run(project_id=p.id, name=run, started=now, last_seen=now, status="running")
    session.add(r)
    session.flush()
    common = dict(run_id=r.id, layer="", episode=1, state="firing", labels={}, first_seen=now, last_seen=now)
    critical = Diagnosis(
        rule_id="loss-nonfinite", severity="critical", symptom="Loss is NaN",
        cause="Learning rate too high or no gradient clipping",
        fix=["Reduce the learning rate", "Clip gradients to norm 1.0"], evidence={"loss": "nan", "step": 25},
        reason="loss is NaN at step 25", first_step=25, last_step=25, **common,
    )
    warning = Diagnosis(
        rule_id="loss-oscillating", severity="warning", symptom="Loss oscillates",
        cause="Learning rate somewhat too high", fix=["Lower the learning rate 2-3x"], evidence={},
        reason="loss swings by 40% between steps", first_step=20, last_step=24, **common,
    )
    session.add_all([critical, warning])
    session.flush()
    return critical, warning


def test_a_diagnosis_pushed_by_the_sink_reads_back_with_labels_and_annotations(alertmanager, store_engine):
    from txwatch.alerts import build_alerting
    from txwatch.settings import Settings
    from txwatch.store.db import session_factory
    from txwatch.store.models import Diagnosis

    factory = session_factory(store_engine)
    alerting = build_alerting(Settings(alertmanager_url=alertmanager.url), factory)
    try:
        with factory() as session, session.begin():
            for diagnosis in _store_run_and_diagnoses(session, "search-ranking", "bert-ft-42"):
                alerting.outbox.record(session, diagnosis, "fire")
        assert alerting.dispatch_due() >= 2

        wait_for_alerts(alertmanager, "both pushed diagnoses", lambda a: len(a) == 2, run="bert-ft-42")
        (alert,) = am_alerts(alertmanager, run="bert-ft-42", severity="critical")
        labels, annotations = alert["labels"], alert["annotations"]
        assert labels["rule"] == "loss-nonfinite"
        assert labels["project"] == "search-ranking"
        assert labels["run"] == "bert-ft-42"
        assert labels["alertname"]
        assert annotations["cause"] == "Learning rate too high or no gradient clipping"
        assert "Reduce the learning rate" in annotations["fix"] and "Clip gradients to norm 1.0" in annotations["fix"]
        assert alert["status"]["state"] == "active"
        # Routed by the shipped configuration (its critical-diagnosis route).
        assert [r["name"] for r in alert["receivers"]] == ["hold"]
        # ...and its inhibition rule: the run's warning is suppressed while the critical one fires.
        (warning,) = wait_for_alerts(
            alertmanager, "the warning inhibited by the critical diagnosis",
            lambda a: len(a) == 1 and a[0]["status"]["state"] == "suppressed", run="bert-ft-42", severity="warning")
        assert warning["labels"]["rule"] == "loss-oscillating"
        assert warning["status"]["inhibitedBy"] == [alert["fingerprint"]]

        # The sink is idempotent: dispatching again sends nothing new.
        assert alerting.dispatch_due() == 0
        assert len(am_alerts(alertmanager, run="bert-ft-42")) == 2

        # Resolving the critical diagnosis resolves its alert, and lifts the inhibition.
        with factory() as session, session.begin():
            diagnosis = session.scalars(select(Diagnosis).where(Diagnosis.rule_id == "loss-nonfinite")).one()
            diagnosis.state = "resolved"
            diagnosis.resolved_at = datetime.now(timezone.utc)
            diagnosis.resolved_step = 40
            alerting.outbox.record(session, diagnosis, "resolve")
        assert alerting.dispatch_due() >= 1
        wait_for_alerts(alertmanager, "the critical alert resolved", lambda a: a == [], run="bert-ft-42",
                        severity="critical")
        wait_for_alerts(alertmanager, "the warning active again",
                        lambda a: bool(a) and a[0]["status"]["state"] == "active", run="bert-ft-42", severity="warning")
    finally:
        alerting.close()


def test_a_nan_loss_reaches_alertmanager_through_a_running_collector(alertmanager, start_collector, db_url):
    """The whole path a team relies on: hooks' batches -> collector -> rule engine -> outbox -> Alertmanager."""
    collector = start_collector(db_url, token=TOKEN, alertmanager_url=alertmanager.url)
    with httpx.Client() as client:
        for body in nan_run_batches("vision", "resnet-nan"):
            post(client, collector.url, TOKEN, body)
    (alert,) = wait_for_alerts(alertmanager, "loss-nonfinite for resnet-nan", run="resnet-nan",
                               rule="loss-nonfinite")
    assert alert["labels"]["project"] == "vision"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["cause"] and alert["annotations"]["fix"]
