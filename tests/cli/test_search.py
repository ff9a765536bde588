"""Finding runs as a user does (real `txwatch` processes, a database and a live daemon): tags from the job
and from `txwatch tag`, `runs --where`, and the same filter as `GET /api/v1/runs?where=`."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.cli.test_history import txwatch
from tests.collector.batches import T0, batch, steps
from tests.live import start_live
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store.db import make_engine, session_factory, upgrade

RUNS = [  # name, config, tags, end status, last loss
    ("lr-1e-4", {"lr": 1e-4, "opt": "adamw"}, ["sweep"], "finished", 0.5),
    ("lr-3e-3", {"lr": 3e-3, "opt": "adamw"}, ["sweep"], "crashed", 4.0),
    ("lr-1e-2", {"lr": 1e-2, "opt": "sgd"}, ["sweep", "sgd"], "crashed", 9.0),
    ("baseline", {"lr": 3e-3, "opt": "adamw"}, [], "finished", 0.4),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('search') / 'txwatch.db'}"
    engine = make_engine(url)
    upgrade(engine)
    collector = Collector(session_factory(engine))
    for i, (name, config, tags, status, loss) in enumerate(RUNS):
        end = {"kind": "end", "time": T0 + 100 + i, "step": 9, "status": status}
        if status == "crashed":
            end["error"] = {"type": "RuntimeError", "message": "boom"}
        collector.ingest(Batch.model_validate(batch(
            run=name, project="sweep", run_info={"started": T0 + i, "config": config, "tags": tags},
            series=steps("loss", 1, 10, lambda s, loss=loss: loss), events=[end])))
    engine.dispose()
    live = start_live(db_url=url)
    yield {"db": ["--db", url], "endpoint": ["--endpoint", live.url], "url": live.url}
    live.stop()


def names(r) -> list[str]:
    assert r.returncode == 0, r.stderr
    return sorted(x["name"] for x in json.loads(r.stdout))


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_runs_where_finds_runs_by_config_tags_and_status(runs, via):
    where = "config.lr > 1e-3 and tags has 'sweep' and status == 'crashed'"
    assert names(txwatch("runs", "--where", where, "--json", *runs[via])) == ["lr-1e-2", "lr-3e-3"]
    assert names(txwatch("runs", "--where", "config.opt == 'adamw' and last_loss < 1", "--json",
                         *runs[via])) == ["baseline", "lr-1e-4"]
    assert names(txwatch("runs", "--where", "not tags has 'sweep'", "--json", *runs[via])) == ["baseline"]
    limited = txwatch("runs", "--where", "tags has 'sweep'", "--limit", "1", "--json", *runs[via])
    assert names(limited) == ["lr-1e-2"]  # the newest match
    table = txwatch("runs", "--where", "name == 'lr-1e-2'", *runs[via])
    assert "lr-1e-2" in table.stdout and "sgd sweep" in table.stdout and "baseline" not in table.stdout
    csv_out = txwatch("runs", "--where", "name == 'lr-1e-2'", "--csv", *runs[via]).stdout
    assert csv_out.splitlines()[0].split(",")[10] == "tags"


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_a_bad_filter_is_one_line_naming_the_column_and_exit_2(runs, via):
    r = txwatch("runs", "--where", "config.lr > 1e-3 and stauts == 'crashed'", *runs[via])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("txwatch: error: --where: unknown field 'stauts' at column 22; use one of name, project, "
                        "status, started, ended, last_seen, duration_s, steps, host, end_reason, last_loss, tags, "
                        "error.type, error.message, or config.NAME / info.NAME\n")


def test_the_api_takes_the_same_filter_and_answers_400_for_a_bad_one(runs):
    with httpx.Client(base_url=runs["url"]) as c:
        r = c.get("/api/v1/runs", params={"where": "tags has 'sgd'"})
        assert r.status_code == 200 and [x["name"] for x in r.json()["runs"]] == ["lr-1e-2"]
        assert r.json()["runs"][0]["tags"] == ["sgd", "sweep"]
        bad = c.get("/api/v1/runs", params={"where": "status = 'x'"})
        assert bad.status_code == 400
        assert bad.json() == {"error": "where: bad filter at column 8: unexpected '=' (comparisons are == != > >= "
                                       "< <=; combine with and, or, not)"}


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_tag_adds_and_removes_tags(runs, via):
    r = txwatch("tag", "baseline", f"best-{via}", "keep", *runs[via])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"sweep/baseline: best-{via} keep"
    assert names(txwatch("runs", "--where", f"tags has 'best-{via}'", "--json", *runs[via])) == ["baseline"]
    r = txwatch("tag", "sweep/baseline", "keep", f"best-{via}", "--remove", *runs[via])
    assert r.returncode == 0 and r.stdout.strip() == "sweep/baseline: no tags"
    bad = txwatch("tag", "baseline", "two words", *runs[via])
    assert bad.returncode == 2 and "tag 'two words' is not allowed" in bad.stderr
    missing = txwatch("tag", "nope", "x", *runs[via])
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr


def test_a_job_adds_its_tags_to_those_added_by_hand(runs):
    url = runs["db"][1]
    assert txwatch("tag", "lr-1e-4", "by-hand", *runs["db"]).returncode == 0
    engine = make_engine(url)
    try:
        Collector(session_factory(engine)).ingest(Batch.model_validate(batch(
            run="lr-1e-4", project="sweep", seq=7, run_info={"tags": ["resumed"]}, series=steps("loss", 10, 12))))
    finally:
        engine.dispose()
    detail = json.loads(txwatch("runs", "--where", "name == 'lr-1e-4'", "--json", *runs["db"]).stdout)
    assert detail[0]["tags"] == ["by-hand", "resumed", "sweep"]
