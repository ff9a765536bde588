"""deploy/prometheus and deploy/alertmanager pass the projects' own checkers: promtool check config / check rules /
test rules, amtool check-config. Each check is also shown to fail on a broken copy, so a pass means something."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.deploy.conftest import DEPLOY, require_binary

PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
RULES_TEST = Path(__file__).with_name("prometheus_rules_test.yml")


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def test_promtool_check_config():
    promtool = require_binary("promtool")
    result = run(promtool, "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    # The config's rule_files glob found the rules (promtool checks them as part of the config).
    assert f"SUCCESS: {len(RULES)} rule files found" in result.stdout


def test_promtool_check_rules():
    promtool = require_binary("promtool")
    assert RULES, "no rule files in deploy/prometheus/rules"
    result = run(promtool, "check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests():
    promtool = require_binary("promtool")
    result = run(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    promtool = require_binary("promtool")
    broken = tmp_path / "broken.yml"
    text = RULES[0].read_text()
    broken.write_text(text.replace('expr: up{job="txwatch"} == 0', 'expr: up{job="txwatch" == 0', 1))
    result = run(promtool, "check", "rules", str(broken))
    assert result.returncode != 0 and "unexpected" in (result.stdout + result.stderr)


def test_amtool_check_config():
    amtool = require_binary("amtool")
    result = run(amtool, "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_rejects_a_route_to_an_unknown_receiver(tmp_path):
    amtool = require_binary("amtool")
    broken = tmp_path / "alertmanager.yml"
    shutil.copy(ALERTMANAGER_YML, broken)
    broken.write_text(broken.read_text().replace("receiver: hold  # production", "receiver: pager  # production"))
    result = run(amtool, "check-config", str(broken))
    assert result.returncode != 0 and 'undefined receiver "pager"' in (result.stdout + result.stderr)
