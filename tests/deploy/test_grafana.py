"""deploy/grafana: the provisioned data source and the txwatch dashboard are consistent and show what the README
says (runs, loss, grad norm, GPU utilization and memory, firing diagnoses). Whether every query works against a
live collector is tested in test_prometheus_e2e.py."""

from __future__ import annotations

from tests.deploy.conftest import DEPLOY, load_yaml
from tests.deploy.promql import dashboard, dashboard_exprs, dashboard_panels, metric_names, rule_exprs

DATASOURCE = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]


def test_every_panel_and_query_uses_the_provisioned_datasource():
    dash = dashboard()
    for panel in dashboard_panels(dash):
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE["uid"]}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE["uid"], panel["title"]
            assert target["expr"].strip(), panel["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == DATASOURCE["uid"]


def test_dashboard_shows_what_the_readme_promises():
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())
    for topic in ("runs", "loss", "gradient norm", "gpu utilization", "gpu memory", "diagnoses"):
        assert topic in titles, f"no panel about {topic}: {titles}"


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_run_panels_filter_by_the_project_and_run_variables():
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    assert names == {"project", "run"}
    for where, expr in dashboard_exprs().items():
        if any(n.startswith("txwatch_run_") for n in metric_names(expr)) and not where.startswith("variable"):
            assert 'project=~"$project"' in expr and 'run=~"$run"' in expr, where


def test_run_series_are_aggregated_with_max_not_sum():
    """Several replicas export the same run (deploy/README.md, "More than one replica")."""
    for where, expr in {**dashboard_exprs(), **rule_exprs()}.items():
        if any(n.startswith("txwatch_run_") for n in metric_names(expr)) and not where.startswith("variable"):
            assert "max by (project, run" in expr, where


def test_metric_name_extraction():
    assert metric_names('sum by (x) (rate(txwatch_a_total{job="txwatch_not_a_metric"}[5m])) / txwatch_b') == \
        {"txwatch_a_total", "txwatch_b"}
    assert metric_names("project:txwatch_runs:count + txwatch_c_bucket") == {"txwatch_c_bucket"}
