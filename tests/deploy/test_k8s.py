"""deploy/k8s: every manifest is valid against Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: an
unknown or misspelt field fails), and the Deployment carries what deploy/README.md describes: probes on /readyz
and /healthz, the Secret references, resource requests and limits, the rules ConfigMap where the settings say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, settings_from_environment
from txwatch.settings import DEFAULT_PORT, Settings

K8S = DEPLOY / "k8s"
# The oldest Kubernetes release the manifests promise to work on (README, "Kubernetes").
K8S_VERSION = "1.29.0"


def documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


@pytest.fixture(scope="module")
def container() -> dict:
    (deployment,) = by_kind("Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("path,doc", [d for d in documents() if d[1]["kind"] != "Kustomization"],
                         ids=lambda v: v.name if isinstance(v, Path) else v.get("kind"))
def test_manifest_is_valid_kubernetes(path, doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {str(exc).splitlines()[0]}")


def test_validation_catches_a_misspelt_field():
    (deployment,) = by_kind("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example():
    (kustomization,) = by_kind("Kustomization")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}


def test_probes_readiness_on_readyz_and_liveness_on_healthz(container):
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == DEFAULT_PORT
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_resources_have_requests_and_limits(container):
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) >= {"memory"}


def test_runs_unprivileged_with_a_read_only_root(container):
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the uid deploy/Dockerfile creates
    assert "--uid 10001" in (DEPLOY / "Dockerfile").read_text()
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs writable /tmp for Python and the libraries.
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_secrets_come_from_the_documented_secret(container):
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {k: (v["name"], v["key"]) for k, v in refs.items()} == {
        "TXWATCH_DB_URL": ("txwatch-secrets", "database-url"),
        "TXWATCH_TOKEN": ("txwatch-secrets", "ingest-token"),
        "TXWATCH_SLACK_TOKEN": ("txwatch-secrets", "slack-token"),
    }
    assert refs["TXWATCH_SLACK_TOKEN"].get("optional") is True, "Slack is optional: the pod must start without it"
    (example,) = by_kind("Secret")
    assert set(example["stringData"]) == {r["key"] for r in refs.values()}
    # The README's kubectl command creates exactly these keys.
    readme = (DEPLOY / "README.md").read_text()
    command = re.search(r"kubectl -n txwatch create secret generic txwatch-secrets.*?(?=\n\S|\n\n)", readme, re.S)
    assert command, "deploy/README.md has no 'kubectl -n txwatch create secret generic txwatch-secrets' step"
    assert set(re.findall(r"--from-literal=([\w-]+)=", command.group(0))) == {"ingest-token", "database-url"}
    assert "slack-token" in readme


def test_every_environment_variable_is_a_real_setting(container, monkeypatch):
    fields = {f"TXWATCH_{name.upper()}" for name in Settings.model_fields}
    names = {e["name"] for e in container["env"]}
    (settings_map,) = [cm for cm in by_kind("ConfigMap") if cm["metadata"]["name"] == "txwatch-settings"]
    assert {"name": "txwatch-settings"} in [e["configMapRef"] for e in container["envFrom"]]
    names |= set(settings_map["data"])
    assert names <= fields, names - fields
    # What the pod's environment adds up to is accepted by the daemon (the Secret's values from the example).
    (example,) = by_kind("Secret")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e} | settings_map["data"]
    env |= {e["name"]: example["stringData"][e["valueFrom"]["secretKeyRef"]["key"]]
            for e in container["env"] if "valueFrom" in e}
    settings = settings_from_environment(env, monkeypatch)
    assert settings.port == DEFAULT_PORT and settings.host == "0.0.0.0"
    assert settings.rules_dirs == [Path("/etc/txwatch/rules")]
    assert settings.token.get_secret_value() == example["stringData"]["ingest-token"]


def test_rules_configmap_is_mounted_where_the_settings_look(container):
    dirs = json.loads(next(e["value"] for e in container["env"] if e["name"] == "TXWATCH_RULES_DIRS"))
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    (deployment,) = by_kind("Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    rules_volume = next(n for n, v in volumes.items() if v.get("configMap", {}).get("name") == "txwatch-rules")
    assert mounts[rules_volume]["mountPath"] in dirs
    assert mounts[rules_volume]["readOnly"] is True


def test_rules_configmap_holds_rules_txwatch_accepts(tmp_path):
    """The example rule in the ConfigMap loads with the real rule loader, as the pod will load it."""
    from txwatch.rules import load_rules

    (cm,) = [cm for cm in by_kind("ConfigMap") if cm["metadata"]["name"] == "txwatch-rules"]
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    builtin = {r.id for r in load_rules([], builtin=True)}
    loaded = load_rules([tmp_path], builtin=True)
    custom = [r for r in loaded if r.id not in builtin]
    assert [r.id for r in custom] == ["val-loss-regressed"]
    # The same example as deploy/rules/ for compose, so the two do not drift apart.
    for name, text in cm["data"].items():
        assert (DEPLOY / "rules" / f"{name}.example").read_text() == text


def test_service_selects_the_pods_on_the_named_port():
    (deployment,) = by_kind("Deployment")
    (service,) = by_kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["port"] == DEFAULT_PORT


def test_more_than_one_replica_with_a_disruption_budget():
    (deployment,) = by_kind("Deployment")
    (pdb,) = by_kind("PodDisruptionBudget")
    assert deployment["spec"]["replicas"] >= 2
    assert pdb["spec"]["minAvailable"] >= 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
