"""`txwatch demo --quick`, run as a newcomer would: the faulty runs raise the right rules, the healthy one none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _txwatch(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "txwatch", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXWATCH_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), COLUMNS="160", PYTHONUNBUFFERED="1")
    proc = _txwatch("demo", "--quick", env=env)
    return proc, env


def test_demo_finishes_and_prints_runs_and_next_commands(demo_run):
    proc, _ = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout
    assert "Demo runs" in out
    for name in ("healthy-", "lr-too-high-", "overfit-", "slow-input-"):
        assert name in out
    assert "txwatch show lr-too-high-" in out
    assert "Traceback" not in proc.stderr


def _diagnoses_by_run(env: dict) -> dict[str, set[str]]:
    runs = json.loads(_txwatch("runs", "--project", "txwatch-demo", "--json", env=env).stdout)
    found: dict[str, set[str]] = {}
    for run in runs:
        proc = _txwatch("diagnoses", "--run", run["name"], "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        found[run["name"].rsplit("-", 2)[0]] = {
            d["rule"] for d in json.loads(proc.stdout) if d["severity"] in ("warning", "critical")
        }
    return found


def test_each_faulty_run_raises_its_rule_and_the_healthy_run_none(demo_run):
    proc, env = demo_run
    assert proc.returncode == 0
    found = _diagnoses_by_run(env)
    assert set(found) == {"healthy", "lr-too-high", "overfit", "slow-input"}
    assert found["healthy"] == set(), f"healthy run raised {found['healthy']}"
    assert found["lr-too-high"] & {"loss-diverging", "gradient-explosion", "loss-nonfinite"}, found
    assert "overfitting" in found["overfit"], found
    assert "slow-training" in found["slow-input"], found


def test_diagnoses_are_printed_as_they_fire(demo_run):
    proc, _ = demo_run
    out = proc.stdout
    assert "cause:" in out and "fix:" in out
    assert "slow-training" in out and "overfitting" in out
