"""End to end: a real Prometheus (Debian's, on loopback, 1 s scrapes) scrapes a live collector that a small
instrumented training run reports to, with the scrape job and rules of deploy/prometheus; the run's metrics
arrive through Prometheus's HTTP API, every Grafana dashboard query runs, the rules load and evaluate, and every
metric name the dashboard and the rules use is one the collector really exports."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import _pg_base, create_pg_database, drop_pg_database
from tests.deploy.conftest import DEPLOY, Server, launch_collector, launch_prometheus, load_yaml
from tests.deploy.feed import TrainedRun, gpu_host_batches, post, train_with_hooks
from tests.deploy.promql import dashboard_exprs, exported_names, rule_exprs, used_metric_names, with_variables

pytestmark = pytest.mark.slow

TOKEN = "deploy-e2e-token-not-a-secret"
PROJECT = "deploy-e2e"
RUN = "mlp-cpu"
GPU_RUN = "gpu-node-run"
WAIT_S = 45.0
# Dashboard panels that must show the fed runs (the others, e.g. firing diagnoses, may rightly be empty).
PANELS_WITH_DATA = ("Loss / A", "Gradient norm", "GPU utilization / A", "GPU memory used / A", "Active runs / A",
                    "Runs / ", "Points ingested / s / A", "Ingest latency p99 / A", "Notifications waiting")


@dataclass
class Stack:
    collector: Server
    prometheus: Server
    trained: TrainedRun

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": expr}, timeout=10.0)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error', r.text[:300])}"
        return body["data"]["result"]


def scrape_config(collector: Server, token_file: Path) -> dict:
    """deploy/prometheus/prometheus.yml as shipped, with only the targets, intervals and file paths changed."""
    config = copy.deepcopy(load_yaml(DEPLOY / "prometheus" / "prometheus.yml"))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    config.pop("alerting", None)  # no Alertmanager here: test_alertmanager_e2e.py covers it
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "txwatch"]
    job["static_configs"] = [{"targets": [collector.url.removeprefix("http://")]}]
    auth = job.get("authorization")
    if auth and "credentials_file" in auth:
        auth["credentials_file"] = str(token_file)
    config["scrape_configs"] = [job]
    return config


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(request, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    started: list[Server] = []
    pg_name = None
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp / 'txwatch.db'}"
    else:
        admin = request.getfixturevalue("pg_admin")
        pg_name = create_pg_database(admin)
        db_url = f"{_pg_base()}/{pg_name}"
    try:
        # As compose.yaml runs it: a token, and deploy/rules as the user rules folder.
        collector = launch_collector(db_url, tmp, token=TOKEN, finished_run_export_s=600,
                                     rules_dirs=json.dumps([str(DEPLOY / "rules")]))
        started.append(collector)
        trained = train_with_hooks(collector.url, TOKEN, PROJECT, RUN, spool_dir=tmp / "spool")
        with httpx.Client() as client:
            for body in gpu_host_batches(PROJECT, GPU_RUN):
                post(client, collector.url, TOKEN, body)
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        prometheus = launch_prometheus(scrape_config(collector, token_file), tmp)
        started.append(prometheus)
        stack = Stack(collector, prometheus, trained)
        _wait_for(stack, f'txwatch_run_loss{{project="{PROJECT}", run="{RUN}"}}')
        _wait_for(stack, f'txwatch_run_gpu_utilization_percent{{project="{PROJECT}", run="{GPU_RUN}"}}')
        # rate() panels need two scrapes in their window; the first scrape alone answers the waits above
        _wait_for(stack, 'count_over_time(up{job="txwatch"}[1m]) >= 2')
        yield stack
    finally:
        for server in reversed(started):
            server.stop()
        if pg_name:
            drop_pg_database(request.getfixturevalue("pg_admin"), pg_name)


def _wait_for(stack: Stack, expr: str) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = stack.query(expr)
        if result:
            return result
        time.sleep(0.5)
    targets = httpx.get(f"{stack.prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
    pytest.fail(f"Prometheus has no {expr} after {WAIT_S}s; targets: {health}\n"
                f"collector log:\n{stack.collector.log()}\nprometheus log:\n{stack.prometheus.log()}")


def test_the_runs_metrics_arrive_in_prometheus(stack):
    (up,) = stack.query('up{job="txwatch"}')
    assert up["value"][1] == "1"
    (loss,) = stack.query(f'txwatch_run_loss{{project="{PROJECT}", run="{RUN}"}}')
    assert loss["metric"]["job"] == "txwatch"
    assert math.isclose(float(loss["value"][1]), stack.trained.losses[-1], rel_tol=1e-5), \
        f"Prometheus shows loss {loss['value'][1]}, the run's last logged loss was {stack.trained.losses[-1]}"
    (step,) = stack.query(f'txwatch_run_step{{project="{PROJECT}", run="{RUN}"}}')
    assert int(float(step["value"][1])) == len(stack.trained.losses)
    # The monitor closed: the run finished, and stays exported (finished_run_export_s) as not running.
    (running,) = stack.query(f'txwatch_run_running{{project="{PROJECT}", run="{RUN}"}}')
    assert running["value"][1] == "0"
    (grad,) = stack.query(f'txwatch_run_grad_norm_total{{project="{PROJECT}", run="{RUN}"}}')
    assert 0 < float(grad["value"][1]) < 1e3
    (util,) = stack.query(f'txwatch_run_gpu_utilization_percent{{project="{PROJECT}", run="{GPU_RUN}"}}')
    assert float(util["value"][1]) == 90.0  # step 20's value in gpu_host_batches: 90 + 20 % 5


def test_every_dashboard_query_runs_and_the_panels_show_the_runs(stack):
    runs = f"{RUN}|{GPU_RUN}"
    empty = []
    for where, expr in dashboard_exprs().items():
        result = stack.query(with_variables(expr, PROJECT, runs))  # a query Prometheus rejects fails here
        if where.startswith(PANELS_WITH_DATA) and not result:
            empty.append(f"{where}: {expr}")
    assert empty == [], "dashboard panels without data for the fed runs:\n" + "\n".join(empty)
    # The variables list the fed project and runs, as Grafana's label_values() would.
    values = httpx.get(f"{stack.prometheus.url}/api/v1/label/run/values",
                       params={"match[]": dashboard_exprs()["variable run"].replace("$project", PROJECT)}).json()
    assert {RUN, GPU_RUN} <= set(values["data"])


def test_the_rules_load_and_evaluate_without_errors(stack):
    expected = set(rule_exprs())
    deadline = time.monotonic() + WAIT_S
    while True:
        groups = httpx.get(f"{stack.prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = {f"{Path(g['file']).name}: {r['name']}": r for g in groups for r in g["rules"]}
        if set(rules) == expected and all(r["health"] == "ok" for r in rules.values()):
            break
        if time.monotonic() > deadline:
            bad = {k: (r["health"], r.get("lastError")) for k, r in rules.items() if r["health"] != "ok"}
            pytest.fail(f"rules loaded {sorted(rules)}, expected {sorted(expected)}; unhealthy: {bad}")
        time.sleep(0.5)
    # The recording rule counts the project's running runs as the collector's own API lists them.
    r = httpx.get(f"{stack.collector.url}/api/v1/runs", params={"project": PROJECT, "status": "running"},
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    listed = r.json()["runs"]
    running = _wait_for(stack, f'project:txwatch_runs_running:sum{{project="{PROJECT}"}}')
    assert float(running[0]["value"][1]) == len(listed) >= 1


def test_every_metric_name_in_the_dashboard_and_rules_is_exported(stack):
    r = httpx.get(f"{stack.collector.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text[:300]
    exported = exported_names(r.text)
    used = used_metric_names()
    assert used, "found no txwatch_ metric in the dashboard and rules"
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert missing == {}, (
        "metric names used by deploy/ that the collector does not export (see docs/metrics.md):\n"
        + "\n".join(f"  {name}: used by {', '.join(where)}" for name, where in sorted(missing.items()))
    )
