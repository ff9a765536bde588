"""What the deploy files query: every PromQL expression in the Grafana dashboard and the Prometheus rules, and
the txwatch metric names they use. Shared by the static tests and the end-to-end test against a live collector."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import yaml

from tests.deploy.conftest import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "txwatch.json"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))

# A metric name the collector exports, not a recording rule (those have colons: level:metric:operation).
_METRIC = re.compile(r"(?<![\w:])txwatch_[A-Za-z0-9_]*(?![\w:])")
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')


def metric_names(expr: str) -> set[str]:
    """The txwatch_* metric names in one PromQL expression (names inside string literals are not metrics)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dash: dict | None = None) -> Iterator[dict]:
    for panel in (dash or dashboard())["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_exprs(dash: dict | None = None) -> dict[str, str]:
    """'panel title / refId' -> PromQL, for every panel query and every templating query."""
    dash = dash or dashboard()
    out = {}
    for panel in dashboard_panels(dash):
        for target in panel["targets"]:
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for var in dash["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        out[f"variable {var['name']}"] = m.group(1) if m else query
    return out


def rule_exprs() -> dict[str, str]:
    """'file: alert/record name' -> PromQL, for every rule."""
    out = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[f"{path.name}: {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return out


def used_metric_names() -> dict[str, set[str]]:
    """metric name -> where it is used (dashboard panels, variables, rules)."""
    used: dict[str, set[str]] = {}
    for where, expr in {**dashboard_exprs(), **rule_exprs()}.items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def with_variables(expr: str, project: str, run: str) -> str:
    """A dashboard query as Grafana sends it for the selected project and runs (names without regex
    metacharacters, or a|b alternatives of them)."""
    return expr.replace("$__rate_interval", "1m").replace("$project", project).replace("$run", run)


def exported_names(exposition: str) -> set[str]:
    """Every sample name a /metrics text exposition can produce, including families that have no sample yet
    (a labelled counter nobody incremented still has its # TYPE line)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["_sum", "_count", "_created", ""],
        "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
        "info": ["_info"],
        "stateset": [""],
        "gauge": [""],
        "unknown": [""],
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names
