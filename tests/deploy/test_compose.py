"""deploy/compose.yaml: valid against the Compose Specification's JSON schema, and wired the way
deploy/README.md says (collector + PostgreSQL with a volume, Prometheus, Alertmanager, Grafana).

compose-spec.schema.json is the Compose Specification schema (compose-spec/compose-spec, schema/compose-spec.json,
Apache-2.0) as shipped in the npm package dclint@3.1.0 (schemas/compose.schema.json); no PyPI or npm package
ships it more directly, and tests cannot reach the internet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from tests.deploy.conftest import DEPLOY, compose_interpolate, load_yaml, settings_from_environment
from txwatch.settings import Settings

SCHEMA = Path(__file__).with_name("compose-spec.schema.json")
COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_matches_the_compose_specification(compose, validator):
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_rejects_a_misspelt_key(compose, validator):
    """The vendored schema is strict enough to catch the mistakes people make (guards against a stub schema)."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["collector"]["healthchek"] = broken["services"]["collector"].pop("healthcheck")
    broken["services"]["postgres"]["volumes"] = "pgdata:/var/lib/postgresql/data"  # a string, not a list
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("healthchek" in m for m in messages), messages
    assert any("is not of type 'array'" in m for m in messages), messages


def test_the_stack_has_every_service_the_readme_promises(compose):
    assert set(compose["services"]) >= {"collector", "postgres", "prometheus", "alertmanager", "grafana"}
    assert {"pgdata", "promdata", "grafanadata"} <= set(compose["volumes"])
    pg = compose["services"]["postgres"]
    assert any(v.startswith("pgdata:/var/lib/postgresql/data") for v in pg["volumes"]), "PostgreSQL keeps no volume"


def test_collector_runs_the_image_against_postgresql_with_settings_from_the_environment(compose):
    collector = compose["services"]["collector"]
    assert collector["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / collector["build"]["context"] / collector["build"]["dockerfile"]).is_file()
    env = collector["environment"]
    assert env["TXWATCH_DB_URL"].startswith("postgresql+psycopg://txwatch:")
    assert env["TXWATCH_DB_URL"].endswith("@postgres:5432/txwatch")
    assert env["TXWATCH_HOST"] == "0.0.0.0"
    # Every variable set is a real setting (a typo would be silently ignored by the daemon's env source).
    fields = {f"TXWATCH_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert collector["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The token comes from the git-ignored env file, whose template names it.
    assert [f["path"] for f in collector["env_file"]] == ["txwatch.env"]
    example = (DEPLOY / "txwatch.env.example").read_text()
    assert re.search(r"^TXWATCH_TOKEN=", example, re.M)
    example_keys = set(re.findall(r"^#?(TXWATCH_[A-Z_]+)=", example, re.M))
    assert example_keys <= fields, example_keys - fields
    assert "txwatch.env" in (DEPLOY / ".gitignore").read_text().split()
    assert collector["healthcheck"]["test"][-1] == "/readyz"


def test_alertmanager_sink_points_at_the_alertmanager_service(compose):
    url = compose["services"]["collector"]["environment"]["TXWATCH_ALERTMANAGER_URL"]
    assert url == "http://alertmanager:9093"
    assert "9093:9093" in compose["services"]["alertmanager"]["ports"]


def test_prometheus_scrapes_the_collector_service_and_loads_the_rules(compose):
    prom = compose["services"]["prometheus"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prom["volumes"]}
    assert mounts["/etc/prometheus"] == "./prometheus"
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = [t for job in config["scrape_configs"] if job["job_name"] == "txwatch"
               for sc in job["static_configs"] for t in sc["targets"]]
    port = compose["services"]["collector"]["environment"]["TXWATCH_PORT"]
    assert targets == [f"collector:{port}"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_every_mounted_file_or_folder_exists(compose):
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which is not in deploy/"


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "txwatch.yml")
    dash_path = provider["providers"][0]["options"]["path"]
    assert mounts[dash_path] == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_path + "/")
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_the_collector_environment_is_accepted_by_the_daemon(compose, monkeypatch):
    """The compose environment plus the env-file template, as the container sees them, are valid settings."""
    env = {k: compose_interpolate(str(v)) for k, v in compose["services"]["collector"]["environment"].items()}
    example = (DEPLOY / "txwatch.env.example").read_text()
    env |= dict(re.findall(r"^(TXWATCH_[A-Z_]+)=(.*)$", example, re.M))
    settings = settings_from_environment(env, monkeypatch)
    assert settings.host == "0.0.0.0" and settings.token is not None
    assert settings.rules_dirs == [Path("/etc/txwatch/rules")]
    assert settings.db_url == "postgresql+psycopg://txwatch:txwatch@postgres:5432/txwatch"
    assert settings.alertmanager_url == "http://alertmanager:9093"


def test_the_rules_folder_mounted_into_the_collector_loads(tmp_path):
    """deploy/rules (README and an example, no rule yet) is a valid rules folder, and the example loads once
    copied to a .yaml name, as its README says."""
    from txwatch.rules import load_rules

    builtin = {r.id for r in load_rules([], builtin=True)}
    assert {r.id for r in load_rules([DEPLOY / "rules"], builtin=True)} == builtin
    (example,) = (DEPLOY / "rules").glob("*.yaml.example")
    (tmp_path / example.name.removesuffix(".example")).write_text(example.read_text())
    assert {r.id for r in load_rules([tmp_path], builtin=True)} - builtin == {"val-loss-regressed"}
