"""``txwatch silence add|list|remove`` against the database (--db) and against a daemon (--endpoint)."""

from __future__ import annotations

import re

import pytest

from txwatch.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, re.sub(r"\s+", " ", out), err


def test_silence_commands_on_the_database(alerts_db, capsys):
    db_url = alerts_db[0]
    code, out, _ = run_cli(capsys, "silence", "add", "--run", "search/bert-42", "--rule", "loss-diverging", "--for", "2h",
                           "--comment", "known", "--db", db_url)
    assert code == 0
    assert "Silenced rule loss-diverging on run search/bert-42 until" in out and "silence #1" in out
    code, out, _ = run_cli(capsys, "silence", "list", "--db", db_url)
    assert code == 0 and "search" in out and "bert-42" in out and "loss-diverging" in out and "known" in out
    code, out, _ = run_cli(capsys, "silence", "remove", "1", "--db", db_url)
    assert code == 0 and "Removed silence #1." in out
    code, out, _ = run_cli(capsys, "silence", "list", "--db", db_url)
    assert "No active silences." in out


@pytest.mark.parametrize("args,message", [
    (["silence", "add", "--for", "2h"], "say what to silence: a run (--run RUN or project/run) or a project"),
    (["silence", "add", "--run", "r", "--for", "forever"], "duration 'forever' not understood"),
    (["silence", "remove", "42"], "no silence with id 42"),
])
def test_silence_mistakes_are_one_line_errors(alerts_db, capsys, args, message):
    db_url = alerts_db[0]
    code, _, err = run_cli(capsys, *args, "--db", db_url)
    assert code == 2
    assert err.strip() == f"txwatch: error: {message}" or err.startswith(f"txwatch: error: {message}")
    assert "Traceback" not in err


def test_silence_commands_against_a_daemon(api_server, capsys, monkeypatch):
    monkeypatch.setenv("TXWATCH_ENDPOINT", api_server)
    monkeypatch.setenv("TXWATCH_TOKEN", "api-token-123")
    code, out, _ = run_cli(capsys, "silence", "add", "--project", "vision", "--for", "30m")
    assert code == 0 and "Silenced every rule on project vision until" in out
    code, out, _ = run_cli(capsys, "silence", "list")
    assert code == 0 and "vision" in out
    code, _, err = run_cli(capsys, "silence", "add", "--run", "x", "--for", "0s")
    assert code == 2 and "HTTP 422" in err and "must be longer than zero" in err
    code, out, _ = run_cli(capsys, "silence", "remove", "1")
    assert code == 0 and "Removed silence #1." in out

    monkeypatch.setenv("TXWATCH_TOKEN", "wrong")
    code, _, err = run_cli(capsys, "silence", "list")
    assert code == 2 and "the daemon rejected the token" in err
    code, _, err = run_cli(capsys, "silence", "list", "--endpoint", "http://127.0.0.1:9")
    assert code == 2 and "could not reach the daemon at http://127.0.0.1:9" in err
