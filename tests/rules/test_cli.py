"""`txwatch rules list | check | replay`, as a person runs them."""

from __future__ import annotations

import json
import math

from txwatch.cli import main


def test_rules_list_shows_every_loaded_rule(capsys, tmp_path):
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "22 rules" in out and "loss-diverging" in out and "built-in" in out

    (tmp_path / "mine.yaml").write_text(
        "id: val-acc-low\nsymptom: Validation accuracy is low\ncause: c\nfix: [f]\nseverity: info\n"
        "condition: last(val_acc) < 0.5\nfor: 5m\n"
    )
    assert main(["rules", "list", "--rules", str(tmp_path), "--no-builtin", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["for"], r["source"].endswith("mine.yaml:1")) for r in listed] == [("val-acc-low", "300s", True)]


def test_rules_check_prints_file_line_problems_and_exits_1(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "id: loss-high\nsymptom: s\ncause: c\nfix: [f]\nseverity: warning\ncondition: mean(loss, last=5) >> 3\n"
    )
    assert main(["rules", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("bad.yaml:6: condition, column 32: unexpected >: expected an expression")
    assert err[-1] == "1 problem found"


def test_rules_check_accepts_the_shipped_rules(capsys):
    from txwatch.rules import builtin_dir

    assert main(["rules", "check", str(builtin_dir())]) == 0
    assert capsys.readouterr().out.startswith("22 rules OK: dead-layer, fp16-overflow, gradient-explosion")


def test_rules_check_of_an_empty_folder_says_so(capsys, tmp_path):
    assert main(["rules", "check", str(tmp_path)]) == 1
    assert "no rule files" in capsys.readouterr().err


def test_a_command_with_bad_user_rules_fails_with_their_problems(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("id: x\n")
    assert main(["rules", "list", "--rules", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid rules:" in err and "bad.yaml:1: symptom: missing" in err


def test_rules_replay_prints_what_would_have_fired(capsys, store_engine, sessions, feeder_factory):
    feed = feeder_factory(None, run="exploded", project="p")
    for start in range(0, 60, 10):
        feed.steps(start, start + 10, loss=lambda s: math.nan if s >= 45 else 1.0)
    url = str(store_engine.url.render_as_string(hide_password=False))

    assert main(["rules", "replay", "exploded", "--db", url, "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    found = replayed["transitions"]
    assert [(e["step"], e["rule"], e["state"]) for e in found] == [(45, "loss-nonfinite", "firing")]
    assert found[0]["reason"] == "the loss is NaN at step 45"
    (incident,) = replayed["incidents"]  # one incident: a NaN with nothing before it points at the data
    assert incident["primary"]["rule"] == "loss-nonfinite" and incident["state"] == "open"
    assert "look at the inputs and the loss first" in incident["note"]

    assert main(["rules", "replay", "p/exploded", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "loss-nonfinite" in out and "firing" in out and "not replayed" in out and "run-stalled" in out
    assert "incident 1 (steps 45-, open): loss-nonfinite at step 45" in out

    assert main(["rules", "replay", "missing", "--db", url]) == 1
    assert "no run named 'missing'" in capsys.readouterr().err


def test_rules_replay_without_a_database_says_what_to_do(capsys, tmp_path):
    assert main(["rules", "replay", "any", "--db", str(tmp_path / "none.db")]) == 2
    assert "no txwatch database at" in capsys.readouterr().err
