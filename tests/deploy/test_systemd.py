"""deploy/systemd/txwatch.service: systemd itself accepts the unit (systemd-analyze verify, no warnings), rates
its sandbox as OK (systemd-analyze security), and it runs as its own user with the database in its state
directory."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, require_binary, settings_from_environment
from txwatch.settings import Settings

UNIT = DEPLOY / "systemd" / "txwatch.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "txwatch.env.example"
# systemd-analyze security's exposure scale is 0.0 (locked down) to 10.0; up to 2.0 it calls the unit "OK".
MAX_EXPOSURE = 2.0


def directives(text: str) -> dict[str, list[str]]:
    """'Section.Key' -> values, in order (systemd keys repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return directives(UNIT.read_text())


def _checkable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at a binary this machine has (verify checks that it exists)."""
    copy = tmp_path / "txwatch.service"
    copy.write_text(UNIT.read_text().replace("/opt/txwatch/bin/txwatch serve", "/bin/true serve"))
    return copy


def test_systemd_accepts_the_unit_without_warnings(tmp_path):
    analyze = require_binary("systemd-analyze")
    result = subprocess.run([analyze, "verify", str(_checkable_copy(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    complaints = [l for l in (result.stdout + result.stderr).splitlines() if "txwatch.service" in l]
    assert result.returncode == 0 and complaints == [], "\n".join(complaints) or result.stderr


def test_verify_would_catch_a_bad_directive(tmp_path):
    """The check above can fail: systemd reports an unknown key and a bad value by file and line."""
    analyze = require_binary("systemd-analyze")
    bad = tmp_path / "txwatch.service"
    bad.write_text(UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=maybe\nProtectHomee=yes"))
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "ProtectHomee" in result.stderr and "protect home value" in result.stderr


def test_sandbox_exposure_is_ok(tmp_path):
    analyze = require_binary("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(_checkable_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for txwatch\.service: ([\d.]+) (\w+)", result.stdout)
    assert m, result.stdout[-2000:] + result.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, result.stdout


def test_runs_as_its_own_user_with_the_database_in_the_state_directory(unit):
    assert unit["Service.DynamicUser"] == ["yes"]
    assert unit["Service.User"] == ["txwatch"]
    assert unit["Service.StateDirectory"] == ["txwatch"]
    env = dict(v.split("=", 1) for v in unit["Service.Environment"])
    assert env["TXWATCH_DB_URL"] == "sqlite:////var/lib/txwatch/txwatch.db"
    assert unit["Service.ExecStart"] == ["/opt/txwatch/bin/txwatch serve"]
    # Secrets through a root-only file read before privileges drop, never on the command line.
    assert unit["Service.EnvironmentFile"] == ["-/etc/txwatch/txwatch.env"]
    assert "TOKEN" not in " ".join(unit["Service.ExecStart"] + unit["Service.Environment"])


def test_hardening_options(unit):
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
    }
    for key, value in expected.items():
        assert value in unit[f"Service.{key}"], f"{key}={value} missing from {UNIT.name}"
    assert unit["Service.KillSignal"] == ["SIGTERM"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_env_example_names_only_real_settings():
    fields = {f"TXWATCH_{name.upper()}" for name in Settings.model_fields}
    keys = set(re.findall(r"^#?(TXWATCH_[A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert keys and keys <= fields, keys - fields


def test_the_unit_environment_is_accepted_by_the_daemon(unit, monkeypatch):
    env = dict(v.split("=", 1) for v in unit["Service.Environment"] if v.startswith("TXWATCH_"))
    env |= dict(re.findall(r"^(TXWATCH_[A-Z_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    settings = settings_from_environment(env, monkeypatch)
    assert settings.is_loopback(), "the single-host default listens on loopback only"
    assert settings.db_url == "sqlite:////var/lib/txwatch/txwatch.db"
