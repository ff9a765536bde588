"""deploy/README.md: what it tells a team to run refers to files, settings and commands that exist."""

from __future__ import annotations

import re

from tests.deploy.conftest import DEPLOY, REPO, load_yaml
from txwatch.settings import Settings

README = (DEPLOY / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def test_every_setting_named_is_a_real_setting():
    fields = {f"TXWATCH_{name.upper()}" for name in Settings.model_fields}
    # TXWATCH_ENDPOINT is the hooks' variable (the training side), not a collector setting.
    named = set(re.findall(r"TXWATCH_[A-Z_]+", README)) - {"TXWATCH_ENDPOINT", "TXWATCH_"}
    assert named <= fields, named - fields


def test_every_file_named_exists():
    paths = set(re.findall(r"`((?:deploy/)?(?:k8s|prometheus|alertmanager|grafana|systemd|rules)/[\w./-]+)`", README))
    paths |= set(re.findall(r"deploy/[\w./-]+\w", README))
    assert paths
    for path in sorted(paths):
        rel = path.removeprefix("deploy/")
        if rel.startswith("alertmanager/secrets/") or rel == "txwatch.env" or rel == ".env":
            continue  # created by the reader, on purpose not in the repository
        assert (DEPLOY / rel).exists() or (REPO / path).exists(), f"README names {path}, which does not exist"


def test_every_step_is_a_command():
    blocks = shell_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        for line in block.strip().splitlines():
            assert not line.startswith(("$ ", "> ")), f"copy-paste-able commands, without prompts: {line}"


def test_the_compose_walkthrough_matches_the_compose_file():
    compose = load_yaml(DEPLOY / "compose.yaml")
    for service, port in [("collector", 8642), ("grafana", 3000), ("prometheus", 9090), ("alertmanager", 9093)]:
        assert f"{port}:{port}" in compose["services"][service]["ports"]
        assert f":{port}" in README
    assert "cp txwatch.env.example txwatch.env" in README and (DEPLOY / "txwatch.env.example").is_file()
    for variable in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "PROMETHEUS_RETENTION"):
        assert variable in README and "${" + variable in (DEPLOY / "compose.yaml").read_text()


def test_production_checklist_names_tokens_volumes_and_retention():
    section = README.split("## Before production", 1)[1].split("\n## ", 1)[0]
    for topic in ("Tokens", "Volumes", "Retention", "TXWATCH_RETENTION_DAYS", "pgdata"):
        assert topic in section, topic


def test_multi_replica_section_exists():
    section = README.split("## More than one replica", 1)[1].split("\n## ", 1)[0]
    assert "PostgreSQL" in section and "max by (project, run)" in section


def test_the_rules_check_step_works_on_the_example(tmp_path, capsys):
    """README: your own rules go in deploy/rules; check them with `txwatch rules check deploy/rules`."""
    from txwatch.cli import main

    assert "txwatch rules check deploy/rules" in README
    rules = tmp_path / "rules"
    rules.mkdir()
    for example in (DEPLOY / "rules").glob("*.yaml.example"):
        (rules / example.name.removesuffix(".example")).write_text(example.read_text())
    assert main(["rules", "check", str(rules)]) == 0
    assert "val-loss-regressed" in capsys.readouterr().out
