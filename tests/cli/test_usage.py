"""Usage errors as a user meets them (a real `txwatch` process): one line on stderr saying what was wrong and where
the help is, exit 2, never a traceback, for every command; `--version`; choices validated."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from txwatch.cli import app


def txwatch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TXWATCH_ENDPOINT": "", "TXWATCH_DB_URL": "", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "txwatch", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def _commands(command, path=()) -> list[str]:
    subs = getattr(command, "commands", None)
    if not subs:
        return [" ".join(path)]
    return [c for name, sub in subs.items() for c in _commands(sub, (*path, name))]


# For every command, a usage mistake a person makes, and what the one line must name.
MISTAKES: dict[str, tuple[list[str], str]] = {
    "runs": (["runs", "--limit", "0"], "--limit"),
    "compare": (["compare"], "Missing argument"),
    "show": (["show"], "Missing argument"),
    "series": (["series", "a", "b"], "unexpected extra argument"),
    "incidents": (["incidents"], "Missing argument"),
    "metrics": (["metrics", "some-run"], "Missing argument"),
    "diagnoses": (["diagnoses", "--severity", "huge"], "'huge' is not one of"),
    "serve": (["serve", "--port", "eighty"], "--port"),
    "demo": (["demo", "--quick=maybe"], "--quick"),
    "db upgrade": (["db", "upgrade", "--no-such-flag"], "No such option: --no-such-flag"),
    "db current": (["db", "current", "extra"], "unexpected extra argument"),
    "rules list": (["rules", "list", "--rules"], "--rules"),
    "rules check": (["rules", "check"], "Missing argument"),
    "rules replay": (["rules", "replay"], "Missing argument"),
    "silence add": (["silence", "add", "--run", "x"], "--for"),
    "silence list": (["silence", "list", "--all=2"], "--all"),
    "silence remove": (["silence", "remove", "seven"], "'ID'"),
    "tag": (["tag", "some-run"], "Missing argument"),
    "import tensorboard": (["import", "tensorboard"], "Missing argument"),
}


def test_every_command_has_a_usage_test():
    assert sorted(_commands(typer.main.get_command(app))) == sorted(MISTAKES)


@pytest.mark.parametrize("command", sorted(MISTAKES))
def test_a_usage_error_is_one_line_and_exit_2(command):
    argv, named = MISTAKES[command]
    r = txwatch(*argv)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("txwatch: error: ") and named.lower() in lines[0].lower(), lines[0]
    assert f"(see `txwatch {command} --help`)" in lines[0]


@pytest.mark.parametrize("argv, named", [
    (["nope"], "No such command 'nope'"),
    (["--bogus"], "No such option: --bogus"),
    (["rules", "nope"], "No such command 'nope'"),
])
def test_unknown_commands_and_options(argv, named):
    r = txwatch(*argv)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and named in r.stderr, r.stderr


def test_version():
    from importlib.metadata import version

    r = txwatch("--version")
    assert r.returncode == 0 and r.stdout == f"txwatch {version('txwatch')}\n"


@pytest.mark.parametrize("argv, choices", [
    (["runs", "--status", "weird"], "'running', 'finished', 'crashed', 'stalled', 'vanished'"),
    (["diagnoses", "--state", "open"], "'firing', 'resolved'"),
])
def test_choices_are_validated_and_listed(argv, choices):
    r = txwatch(*argv)
    assert r.returncode == 2 and choices in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_bare_group_prints_its_help():
    for argv, listed in (([], "series"), (["rules"], "replay")):
        r = txwatch(*argv)
        assert r.returncode == 2 and listed in r.stdout and r.stderr == "", r.stderr
