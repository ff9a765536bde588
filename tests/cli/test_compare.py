"""`txwatch compare` as a user runs it (a real process, over a database and a live daemon): config differences
and the key figures side by side, --json, and the mistakes."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest

from tests.cli.test_history import txwatch
from tests.collector.batches import T0, batch
from tests.live import start_live
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store.db import make_engine, session_factory, upgrade
from txwatch.store.models import Diagnosis, Run


def _series(values):
    return [[s, T0 + s, v] for s, v in enumerate(values, start=1)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'txwatch.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sf = session_factory(engine)
    common = {"batch_size": 32, "optim": {"name": "adamw", "betas": [0.9, 0.95]}}
    good = {"loss": _series([2.0, 1.5, 1.0, 0.8, 0.9]), "val_loss": _series([None, 1.6, None, 1.1, None])}
    bad = {"loss": _series([2.0, 1.9, 3.0, math.nan, math.nan])}
    for name, config, series, end in (
        ("good", {**common, "lr": 3e-4, "warmup": 100}, good, "finished"),
        ("bad", {**common, "lr": 3e-2, "optim": {"name": "adamw", "betas": [0.9, 0.99]}}, bad, "crashed"),
    ):
        series = {k: [p for p in v if p[2] is not None] for k, v in series.items()}
        Collector(sf).ingest(Batch.model_validate(batch(
            run=name, project="cmp", run_info={"started": T0, "config": config}, series=series,
            events=[{"kind": "end", "time": T0 + 10, "step": 5, "status": end}])))
    with sf.begin() as s:
        bad_id = s.query(Run.id).filter(Run.name == "bad").scalar()
        now = datetime.now(timezone.utc)
        for rule, step in (("loss-diverging", 3), ("loss-nonfinite", 4)):
            s.add(Diagnosis(run_id=bad_id, rule_id=rule, layer="", episode=1, state="firing", severity="critical",
                            symptom="s", cause="c", fix=["f"], labels={}, evidence={}, reason="r", first_step=step,
                            last_step=step, first_seen=now, last_seen=now))
    engine.dispose()
    live = start_live(db_url=url)
    yield {"db": ["--db", url], "endpoint": ["--endpoint", live.url]}
    live.stop()


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_compare_json_has_the_figures_and_the_config_differences(sources, via):
    r = txwatch("compare", "good", "cmp/bad", "--json", *sources[via])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    good, bad = out["runs"]
    assert (good["run"], good["status"], good["steps"], good["diagnoses"]) == ("good", "finished", 5, 0)
    assert (good["final_loss"], good["best_loss"], good["best_loss_step"]) == (0.9, 0.8, 4)
    assert (good["final_val_loss"], good["best_val_loss"], good["best_val_loss_step"]) == (1.1, 1.1, 4)
    assert bad["status"] == "crashed" and math.isnan(bad["final_loss"]) and bad["best_loss"] == 1.9
    assert bad["final_val_loss"] is None and bad["diagnoses"] == 2
    assert bad["rules"] == ["loss-diverging", "loss-nonfinite"]
    assert out["config_differences"] == {"lr": [3e-4, 3e-2], "optim.betas": [[0.9, 0.95], [0.9, 0.99]],
                                         "warmup": [100, None]}
    assert out["config_same"] == {"batch_size": 32, "optim.name": "adamw"}


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_compare_table_puts_the_runs_side_by_side(sources, via):
    r = txwatch("compare", "good", "bad", *sources[via])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    best = next(line for line in lines if line.lstrip("│ ").startswith("best loss"))
    assert "0.8" in best and "1.9" in best
    assert any("lr" in line and "0.0003" in line and "0.03" in line for line in lines)
    assert any("warmup" in line and "100" in line and "-" in line for line in lines)
    assert "same in all: batch_size=32, optim.name=adamw" in r.stdout
    assert "loss-diverging, loss-nonfinite" in r.stdout


@pytest.mark.parametrize("args, code, message", [
    (["compare", "good"], 2, "compare needs two or more runs"),
    (["compare", "good", "cmp/good"], 2, "the same run is named twice"),
    (["compare", "good", "nope"], 1, "no run 'nope' in any project"),
])
def test_compare_mistakes_are_one_line(sources, args, code, message):
    r = txwatch(*args, *sources["db"])
    assert r.returncode == code and message in r.stderr and r.stderr.count("\n") == 1
