"""Reading history as a user does (a real `txwatch` process), through --db and through a live daemon
(--endpoint / TXWATCH_ENDPOINT): `series`, unknown runs, full names in pipes, --csv and --json alike, `rules
replay` over a daemon; and text from the history that would attack the terminal, rich or a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from tests.cli.test_query import fill
from tests.collector.batches import T0, batch, steps
from tests.live import start_live
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store.db import make_engine, session_factory
from txwatch.store.models import Diagnosis, Run

LONG = "a-run-name-long-enough-that-a-table-of-eighty-columns-would-cut-or-wrap-it-0123456789"
ESC = "\x1b"
EVIL_HOST = "gpu[/]01[bold]\x1b]0;owned\x07\x1b[2J"  # rich markup and an OSC title / clear-screen
FORMULA_HOST = "=cmd|' /C calc'!A0"


def txwatch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "80", "TXWATCH_ENDPOINT": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "txwatch", *args], capture_output=True, text=True, timeout=120,
                          env=full_env)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('history') / 'txwatch.db'}"
    fill(url)  # runs gpt (lm) and bert-ft (search), bert-ft's NaN loss diagnosed
    engine = make_engine(url)
    sf = session_factory(engine)
    layered = {**steps("loss", 0, 5), **steps("grad_norm/fc.weight", 0, 5), **steps("grad_norm/fc.bias", 0, 3),
               **steps("update_ratio/fc.weight", 0, 2), **steps("lr/0", 0, 5, lambda s: 1e-3)}
    Collector(sf).ingest(Batch.model_validate(batch(run=LONG, project="lm", run_info={"started": T0 + 30},
                                                    series=layered)))
    Collector(sf).ingest(Batch.model_validate(batch(run="evil", project="lm", run_info={"started": T0 + 40},
                                                    series=steps("loss", 0, 2))))
    with sf.begin() as s:  # texts a training job controls, written as an older or hostile client could
        evil = s.query(Run).filter(Run.name == "evil").one()
        evil.host, evil.config = EVIL_HOST, {"note": "[red]x\x1b[31m", "cmd": "@SUM(1+1)"}
        evil.status, evil.end_reason, evil.error_type = "crashed", "crashed", "ValueError"
        evil.error_message = "bad \x1b[8mhidden\x1b[0m [/] \u202eevil"
        s.query(Run).filter(Run.name == "gpt").one().host = FORMULA_HOST
        d = s.query(Diagnosis).one()
        s.add(Diagnosis(run_id=evil.id, rule_id="loss-nonfinite", layer="", episode=1, state="firing",
                        severity="critical", symptom="=1+1 \x1b[2J[/]", cause="-cause\x07", fix=["+fix"],
                        labels={}, evidence={}, reason="r", first_step=1, last_step=1, first_seen=d.first_seen,
                        last_seen=d.last_seen))
    engine.dispose()
    live = start_live(db_url=url)
    yield {"db": ["--db", url], "endpoint": ["--endpoint", live.url], "url": live.url}
    live.stop()


VIAS = ["db", "endpoint"]


@pytest.mark.parametrize("via", VIAS)
def test_series_lists_every_series_grouped_by_metric(history, via):
    r = txwatch("series", f"lm/{LONG}", "--json", *history[via])
    assert r.returncode == 0, r.stderr
    got = {x["name"]: (x["points"], x["last_value"]) for x in json.loads(r.stdout)}
    assert got == {"loss": (5, 0.2), "lr/0": (5, 1e-3), "grad_norm/fc.weight": (5, 0.2),
                   "grad_norm/fc.bias": (3, 1 / 3), "update_ratio/fc.weight": (2, 0.5)}
    table = txwatch("series", LONG, *history[via]).stdout
    assert "grad_norm/* (2 layers)" in table and "fc.bias" in table and "lr/* (1 layers)" in table
    assert table.index("grad_norm/*") < table.index("fc.bias") < table.index("lr/*")
    rows = list(csv.DictReader(io.StringIO(txwatch("series", LONG, "--csv", *history[via]).stdout)))
    assert [r["name"] for r in rows] == [x["name"] for x in json.loads(r.stdout)]


@pytest.mark.parametrize("via", VIAS)
def test_an_unknown_run_is_an_error_everywhere(history, via):
    for argv in (["diagnoses", "--run", "nope"], ["series", "nope"], ["show", "lm/nope"], ["metrics", "nope", "loss"],
                 ["diagnoses", "--run", "search/gpt"]):
        r = txwatch(*argv, *history[via])
        assert r.returncode == 1, (argv, r.stdout, r.stderr)
        assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "no run" in r.stderr, r.stderr
        assert "`txwatch runs` lists them" in r.stderr


@pytest.mark.parametrize("via", VIAS)
def test_csv_and_json_carry_the_same_columns(history, via):
    for argv in (["runs"], ["diagnoses"], ["metrics", "gpt", "loss"], ["series", "gpt"]):
        as_json = json.loads(txwatch(*argv, "--json", *history[via]).stdout)
        header = next(csv.reader(io.StringIO(txwatch(*argv, "--csv", *history[via]).stdout)))
        assert header == list(as_json[0]), argv


@pytest.mark.parametrize("via", VIAS)
def test_piped_tables_print_full_run_names(history, via):
    assert LONG in txwatch("runs", *history[via]).stdout
    assert LONG in txwatch("series", LONG, *history[via]).stdout
    for argv in (["runs"], ["show", LONG], ["series", LONG], ["diagnoses"], ["metrics", LONG, "loss"]):
        out = txwatch(*argv, *history[via]).stdout
        assert max(map(len, out.splitlines())) < 500, f"{argv}: nothing is padded to the unlimited width"


def test_rules_replay_reads_a_daemon_like_the_database(history):
    from_db = txwatch("rules", "replay", "bert-ft", "--json", *history["db"])
    assert from_db.returncode == 0, from_db.stderr
    assert any(e["rule"] == "loss-nonfinite" and e["state"] == "firing"
               for e in json.loads(from_db.stdout)["transitions"])
    from_daemon = txwatch("rules", "replay", "bert-ft", "--json", env={"TXWATCH_ENDPOINT": history["url"]})
    assert from_daemon.returncode == 0, from_daemon.stderr
    assert json.loads(from_daemon.stdout) == json.loads(from_db.stdout)
    r = txwatch("rules", "replay", "nope", *history["endpoint"])
    assert r.returncode == 1 and "no run 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _printed(r: subprocess.CompletedProcess) -> str:
    return r.stdout + r.stderr


@pytest.mark.parametrize("via", VIAS)
def test_terminal_and_markup_codes_in_history_print_as_text(history, via):
    shown = txwatch("show", "evil", *history[via])
    assert shown.returncode == 0, shown.stderr  # `[/]` in the host used to crash rich
    for r in (shown, txwatch("diagnoses", "--run", "evil", *history[via]), txwatch("runs", *history[via])):
        assert ESC not in _printed(r) and "\x07" not in _printed(r) and "\u202e" not in _printed(r)
    out = shown.stdout
    assert "gpu[/]01[bold]\\x1b]0;owned\\x07\\x1b[2J" in out
    assert "[red]x\\x1b[31m" in out and "bad \\x1b[8mhidden\\x1b[0m [/] \\u202eevil" in out
    diag = txwatch("diagnoses", "--run", "evil", *history[via]).stdout
    assert "=1+1 \\x1b[2J[/]" in diag and "-cause\\x07" in diag
    assert ESC in json.loads(txwatch("show", "evil", "--json", *history[via]).stdout)["host"]  # JSON stays exact


@pytest.mark.parametrize("via", VIAS)
def test_csv_neutralises_spreadsheet_formulas(history, via):
    runs = {r["name"]: r for r in csv.DictReader(io.StringIO(txwatch("runs", "--csv", *history[via]).stdout))}
    assert runs["gpt"]["host"] == "'" + FORMULA_HOST
    assert runs["evil"]["host"] == "gpu[/]01[bold]\\x1b]0;owned\\x07\\x1b[2J"
    [d] = csv.DictReader(io.StringIO(txwatch("diagnoses", "--run", "evil", "--csv", *history[via]).stdout))
    assert d["symptom"] == "'=1+1 \\x1b[2J[/]" and d["cause"] == "'-cause\\x07" and d["fix"] == '["+fix"]'
    assert runs["gpt"]["steps"] == "3"  # numbers stay numbers
