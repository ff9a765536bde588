"""The query commands as a user runs them (a subprocess), against a database and a live daemon."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import pytest

from tests.live import start_live
from tests.collector.batches import T0, batch, steps
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store.db import make_engine, session_factory, upgrade
from txwatch.store.models import Diagnosis, Run


def txwatch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "txwatch", *args], capture_output=True, text=True, timeout=120,
                          env=full_env)


def fill(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sf = session_factory(engine)
    c = Collector(sf)
    c.ingest(Batch.model_validate(batch(
        run="bert-ft", project="search", run_info={"started": T0, "config": {"lr": 5e-5}},
        series={"loss": [[0, T0, 2.5], [1, T0 + 1, math.nan], [2, T0 + 2, math.inf]]},
        events=[{"kind": "start", "time": T0}])))
    c.ingest(Batch.model_validate(batch(run="gpt", project="lm", run_info={"started": T0 + 10},
                                        series=steps("loss", 0, 4), events=[
                                            {"kind": "end", "time": T0 + 20, "step": 3, "status": "crashed",
                                             "error": {"type": "RuntimeError", "message": "boom"}}])))
    with sf.begin() as s:
        run_id = s.query(Run.id).filter(Run.name == "bert-ft").scalar()
        from datetime import datetime, timezone

        now = datetime.now(timezone.utc)
        s.add(Diagnosis(run_id=run_id, rule_id="loss-nonfinite", layer="", episode=1, state="firing",
                        severity="critical", symptom="loss is NaN at step 1", cause="LR too high", fix=["lower lr"],
                        labels={}, evidence={"value": "NaN", "step": 1}, reason="loss NaN", first_step=1,
                        last_step=1, first_seen=now, last_seen=now))
    engine.dispose()


@pytest.fixture
def filled(db_url):
    fill(db_url)
    return db_url


@pytest.fixture
def sources(filled):
    """The same data read both ways: --db and --endpoint of a live daemon on it."""
    live = start_live(db_url=filled)
    yield {"db": ["--db", filled], "endpoint": ["--endpoint", live.url]}
    live.stop()


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_runs_json_csv_and_table(sources, via):
    r = txwatch("runs", "--json", *sources[via])
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)
    assert [x["name"] for x in runs] == ["gpt", "bert-ft"]
    gpt = runs[0]
    assert {k: gpt[k] for k in ("project", "status", "steps")} == {"project": "lm", "status": "crashed", "steps": 3}
    assert gpt["started"].startswith("2025-11-29") and gpt["ended"].startswith("2025-11-29")
    assert runs[1]["ended"] is None
    rows = list(csv.DictReader(io.StringIO(txwatch("runs", "--csv", *sources[via]).stdout)))
    assert [row["name"] for row in rows] == ["gpt", "bert-ft"] and rows[0]["status"] == "crashed"
    table = txwatch("runs", "--project", "search", *sources[via]).stdout
    assert "bert-ft" in table and "gpt" not in table and "1 critical" in table


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_metrics_json_keeps_nan_and_infinity(sources, via):
    r = txwatch("metrics", "bert-ft", "loss", "--json", *sources[via])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ('[{"step": 0, "value": 2.5, "time": 1764393000.0}, '
                                '{"step": 1, "value": NaN, "time": 1764393001.0}, '
                                '{"step": 2, "value": Infinity, "time": 1764393002.0}]')
    assert "NaN" in txwatch("metrics", "search/bert-ft", "loss", *sources[via]).stdout


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_show_and_diagnoses(sources, via):
    out = txwatch("show", "gpt", *sources[via])
    assert out.returncode == 0 and "crashed" in out.stdout and "RuntimeError: boom" in out.stdout
    r = txwatch("diagnoses", "--run", "bert-ft", "--json", *sources[via])
    assert r.returncode == 0, r.stderr
    [d] = json.loads(r.stdout)
    assert {k: d[k] for k in ("rule", "severity", "run", "project", "step", "layer", "state")} == {
        "rule": "loss-nonfinite", "severity": "critical", "run": "bert-ft", "project": "search", "step": 1,
        "layer": None, "state": "firing"}
    assert d["symptom"] and d["cause"] == "LR too high" and d["fix"] == ["lower lr"] and d["first_seen"]
    assert d["evidence"] == {"value": "NaN", "step": 1}
    assert json.loads(txwatch("diagnoses", "--run", "gpt", "--json", *sources[via]).stdout) == []
    assert "lower lr" in txwatch("diagnoses", *sources[via]).stdout


def test_unknown_run_and_series_say_so(filled):
    r = txwatch("show", "nope", "--db", filled)
    assert r.returncode != 0 and "no run 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = txwatch("metrics", "gpt", "val_loss", "--db", filled)
    assert r.returncode != 0 and "no series 'val_loss'" in r.stderr and "loss" in r.stderr


def test_daemon_away_bad_url_and_no_database_explain_the_fix(tmp_path):
    r = txwatch("runs", "--endpoint", "http://127.0.0.1:9")
    assert r.returncode == 2 and "txwatch serve" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = txwatch("runs", env={"TXWATCH_ENDPOINT": "localhost:8642"})
    assert r.returncode == 2 and "bad endpoint URL" in r.stderr and "http://" in r.stderr
    r = txwatch("runs")  # the default local database does not exist yet in this fresh HOME
    assert r.returncode == 2 and "no txwatch database" in r.stderr and "Traceback" not in r.stderr
    r = txwatch("runs", "--db", str(tmp_path / "missing.db"))
    assert r.returncode == 2 and "missing.db" in r.stderr


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_incidents_lead_with_the_root_cause_and_its_first_fix(sources, via):
    r = txwatch("incidents", "search/bert-ft", "--json", *sources[via])
    assert r.returncode == 0, r.stderr
    [incident] = json.loads(r.stdout)
    assert incident["primary"]["rule"] == "loss-nonfinite" and incident["fix"] == ["lower lr"]
    assert incident["state"] == "open"  # bert-ft is still running
    text = txwatch("incidents", "bert-ft", *sources[via]).stdout
    assert "incident 1 (steps 1-, open): loss-nonfinite at step 1: loss NaN" in text
    assert "first fix: lower lr" in text
    quiet = txwatch("incidents", "gpt", *sources[via])
    assert quiet.returncode == 0 and "no incident in gpt" in quiet.stdout
    unknown = txwatch("incidents", "nope", *sources[via])
    assert unknown.returncode == 1 and "no run 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr
