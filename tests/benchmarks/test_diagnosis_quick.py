"""The diagnosis benchmark's quick subset guards the rules' accuracy: it trains its scenarios for real (one
seed, about a quarter of the corpus, every built-in rule expected by at least one of them) and fails when
recall or primary-cause accuracy fall below, or false alarms per healthy run rise above, the figures
committed in ``benchmarks/scenarios/quick_baseline.json``. A rule change that improves them updates that file
(``benchmarks/diagnosis.py --quick --json``), so the next change is held to the new figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scenarios.registry import select
from txwatch.rules import builtin_dir, load_rules

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "benchmarks" / "scenarios" / "quick_baseline.json"


def _before_training(rule) -> bool:
    """A rule that reads only what preflight sends before the first step (preflight/*): no training scenario
    can show it; tests/hooks/test_preflight_collector.py drives it from real preflight runs instead."""
    patterns = {s.pattern for s in rule.program.checked.series}
    return bool(patterns) and all(p.startswith("preflight/") for p in patterns)


def test_every_builtin_rule_is_expected_by_a_quick_scenario():
    rules = {p.stem for p in builtin_dir().glob("*.yaml")}
    preflight = {r.id for r in load_rules([]) if _before_training(r)}
    assert preflight <= rules and len(preflight) < len(rules)
    expected = set().union(*(s.expected for s in select(quick=True)))
    assert rules - preflight - expected == set()


def test_the_quick_subset_is_a_quarter_of_the_corpus_with_healthy_runs():
    quick, every = select(quick=True), select()
    assert 0.15 <= len(quick) / len(every) <= 0.35
    assert sum(s.healthy for s in quick) >= len(quick) // 4


def test_the_quick_figures_hold_the_committed_baseline():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diagnosis.py"), "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    got, want = result["summary"], json.loads(BASELINE.read_text())["summary"]
    rows = {r["name"]: r["verdict"] for r in result["rows"]}
    assert got["broken"] == 0, [r for r in result["rows"] if r["verdict"] == "broken"]
    assert got["scenarios"] == want["scenarios"], "the quick subset changed: commit a new baseline with it"
    # one scenario's worth of slack: the slow-input and timing-dependent figures can move by one run
    slack = 1 / max(1, want["faulty"]) + 1e-9
    assert got["recall"] >= want["recall"] - slack, (got["recall"], want["recall"], rows)
    assert got["primary_right"] >= want["primary_right"] - slack, (got["primary_right"], want["primary_right"], rows)
    assert got["false_alarms_per_healthy"] <= want["false_alarms_per_healthy"] + 1 / max(1, want["healthy"]) + 1e-9, (
        got["false_alarms_per_healthy"], want["false_alarms_per_healthy"], rows)
