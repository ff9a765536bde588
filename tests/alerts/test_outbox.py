"""The outbox: one row per destination and change, decided in the rule engine's transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.alerts.conftest import DEFAULT_DIAG, T0, change, fire, make_run, rows, slack_settings
from txwatch.alerts import build_alerting
from txwatch.store.codec import json_safe
from txwatch.settings import Settings
from txwatch.store.models import Diagnosis


def test_two_collectors_recording_the_same_change_write_one_row(sessions, slack, clock):
    a = build_alerting(slack_settings(slack), sessions, clock=clock)
    b = build_alerting(slack_settings(slack), sessions, clock=clock)
    diag = fire(sessions, a)
    with sessions() as s, s.begin():
        assert b.outbox.record(s, s.get(Diagnosis, diag), "fire") == 0
    assert [r.dedupe_key for r in rows(sessions)] == [f"slack:#alerts:{diag}:fire:1"]


def test_a_rolled_back_change_leaves_no_notification_and_prints_nothing(sessions, clock):
    lines = []
    alerting = build_alerting(Settings(), sessions, clock=clock, console=lambda text, payload: lines.append(text))
    run_id = make_run(sessions)
    with sessions() as s:
        with s.begin():
            d = Diagnosis(run_id=run_id, state="firing", first_step=1, last_step=1, first_seen=T0, last_seen=T0, **DEFAULT_DIAG)
            s.add(d)
            s.flush()
            alerting.outbox.record(s, d, "fire")
            s.rollback()
    assert lines == [] and rows(sessions) == []
    fire(sessions, alerting)
    assert len(lines) == 1 and lines[0].startswith("[CRITICAL] search-ranking/bert-ft-42 step 412: Loss became NaN")


def test_every_configured_sink_gets_its_row(sessions, clock):
    settings = Settings(slack_token="xoxb-1111-2222", slack_channel="C0ALERTS1", webhook_url="http://127.0.0.1:9/hook",
                        alertmanager_url="http://127.0.0.1:9", group_window_s=10)
    alerting = build_alerting(settings, sessions, clock=clock)
    diag = fire(sessions, alerting)
    got = {r.sink: r for r in rows(sessions)}
    assert sorted(got) == ["alertmanager", "slack", "webhook"]
    assert got["webhook"].dedupe_key == f"webhook:default:{diag}:fire:1"
    # Slack waits for the group window; the others are due at once.
    assert (got["slack"].next_attempt - got["webhook"].next_attempt).total_seconds() == pytest.approx(10)
    assert got["webhook"].payload["diagnosis"]["rule"] == "loss-nonfinite"
    alerting.close()


def test_nothing_is_written_when_no_sink_is_configured(sessions, clock):
    alerting = build_alerting(Settings(), sessions, clock=clock)
    fire(sessions, alerting)
    assert rows(sessions) == []


def test_resolve_is_written_only_for_episodes_that_were_announced(sessions, slack, clock):
    alerting = build_alerting(slack_settings(slack), sessions, clock=clock)
    run_id = make_run(sessions)
    with sessions() as s, s.begin():  # a diagnosis that never fired through this outbox (e.g. Slack set up later)
        d = Diagnosis(run_id=run_id, state="firing", first_step=1, last_step=1, first_seen=T0, last_seen=T0, **DEFAULT_DIAG)
        s.add(d)
        s.flush()
        diag = d.id
    assert change(sessions, alerting, diag, "resolve") == 0
    fired = fire(sessions, alerting, run="run-2")
    assert change(sessions, alerting, fired, "resolve") == 1
    assert [r.kind for r in rows(sessions)] == ["fire", "resolve"]


def test_a_misused_kind_raises(sessions, slack, clock):
    alerting = build_alerting(slack_settings(slack), sessions, clock=clock)
    diag = fire(sessions, alerting)
    with sessions() as s, pytest.raises(ValueError, match="kind must be one of"):
        alerting.outbox.record(s, s.get(Diagnosis, diag), "fired")


def test_payload_survives_non_finite_numbers():
    assert json_safe({"loss": float("nan"), "x": [float("inf"), -float("inf"), 1.5], "n": None}) == {
        "loss": "NaN", "x": ["Infinity", "-Infinity", 1.5], "n": None}


def test_the_payload_is_a_snapshot_of_the_decision(sessions, slack, clock):
    alerting = build_alerting(slack_settings(slack, public_url="https://tx.example.com/"), sessions, clock=clock)
    diag = fire(sessions, alerting, layer="decoder.fc.weight")
    with sessions() as s, s.begin():
        s.get(Diagnosis, diag).symptom = "changed later"
    [row] = rows(sessions)
    assert row.payload["diagnosis"]["symptom"] == "Loss became NaN"
    assert row.payload["diagnosis"]["layer"] == "decoder.fc.weight"
    assert row.payload["run"] == {"name": "bert-ft-42", "project": "search-ranking",
                                  "url": "https://tx.example.com/runs/search-ranking/bert-ft-42"}
    with sessions() as s:
        assert s.scalar(select(Diagnosis.symptom).where(Diagnosis.id == diag)) == "changed later"
