"""The query API against a live daemon: runs, one run, series (downsampled), layers, diagnoses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.api.test_ingest import post
from tests.collector.batches import T0, batch, steps


def get(client, path, **params):
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return json.loads(r.text)


def test_runs_filtered_newest_first_with_detail(client):
    post(client, batch(run="old", project="a", run_info={"started": T0, "config": {"lr": 0.1}},
                       series=steps("loss", 0, 5), events=[{"kind": "end", "time": T0 + 5, "status": "finished"}]))
    post(client, batch(run="new", project="b", run_info={"started": T0 + 100}, series=steps("loss", 0, 3)))
    runs = get(client, "/api/v1/runs")["runs"]
    assert [r["name"] for r in runs] == ["new", "old"]
    assert runs[1]["status"] == "finished" and runs[1]["steps"] == 4 and runs[1]["last_loss"] == 0.2
    assert [r["name"] for r in get(client, "/api/v1/runs", project="a")["runs"]] == ["old"]
    assert [r["name"] for r in get(client, "/api/v1/runs", status="running")["runs"]] == ["new"]
    assert [r["name"] for r in get(client, "/api/v1/runs", since=T0 + 50)["runs"]] == ["new"]
    assert [r["name"] for r in get(client, "/api/v1/runs", until="2025-11-29T05:10:30Z")["runs"]] == ["old"]
    assert len(get(client, "/api/v1/runs", limit=1)["runs"]) == 1
    detail = get(client, "/api/v1/runs/a/old")
    assert detail["config"] == {"lr": 0.1} and detail["summary"]["last_values"]["loss"] == 0.2
    r = client.get("/api/v1/runs/a/missing")
    assert r.status_code == 404 and "missing" in r.json()["error"]
    assert client.get("/api/v1/runs", params={"status": "exploded"}).status_code == 422


def test_long_series_is_downsampled_keeping_extremes_and_nan(client):
    n = 20_000
    values = [math.sin(s / 300) for s in range(n)]
    values[12_345] = 50.0  # a spike must survive downsampling
    values[777] = -50.0
    values[9_000] = math.nan
    for seq, lo in enumerate(range(0, n, 5000)):
        post(client, batch(seq=seq, series={"loss": [[s, T0 + s, values[s]] for s in range(lo, lo + 5000)]}))
    body = get(client, "/api/v1/runs/p/r/series/loss", max_points=500)
    pts = body["points"]
    assert body["downsampled"] and 100 < len(pts) <= 500
    steps_ = [p["step"] for p in pts]
    assert steps_ == sorted(steps_) and len(set(steps_)) == len(steps_)
    finite = [p["value"] for p in pts if not math.isnan(p["value"])]
    assert max(finite) == 50.0 and min(finite) == -50.0
    assert {"step": 12_345, "time": T0 + 12_345, "value": 50.0} in pts
    assert [p["step"] for p in pts if math.isnan(p["value"])] == [9_000]
    # a zoomed range is exact at its edges and raw when small enough
    zoom = get(client, "/api/v1/runs/p/r/series/loss", start=12_000, end=12_999, max_points=2000)
    assert not zoom["downsampled"] and [p["step"] for p in zoom["points"]] == list(range(12_000, 13_000))
    series = get(client, "/api/v1/runs/p/r/series")["series"]
    assert series == [{"name": "loss", "metric": "loss", "layer": None, "points": n, "last_step": n - 1,
                       "last_value": values[-1]}]


def test_layers_heatmap_has_a_row_per_layer(client):
    layers = ["enc.0.weight", "enc.1.weight", "head.weight"]
    series = {f"grad_norm/{name}": [[s, T0 + s, (i + 1) * 1.0] for s in range(0, 1000, 10)]
              for i, name in enumerate(layers)}
    series["grad_norm/head.weight"][50][2] = math.nan
    post(client, batch(series=series | steps("loss", 0, 1000)))
    hm = get(client, "/api/v1/runs/p/r/layers", metric="grad_norm", max_steps=20)
    assert hm["layers"] == layers
    assert len(hm["values"]) == 3 and all(len(row) == len(hm["steps"]) for row in hm["values"])
    assert 10 <= len(hm["steps"]) <= 20
    assert hm["values"][0][0] == 1.0 and hm["values"][1][3] == 2.0 and hm["values"][2][0] == 3.0
    assert get(client, "/api/v1/runs/p/r/layers", metric="update_ratio")["layers"] == []


class Net(torch.nn.Module):
    """A small model whose parameter names are far from alphabetical in model order."""

    def __init__(self):
        super().__init__()
        self.proj_in = torch.nn.Linear(6, 8)
        self.block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
        self.norm = torch.nn.LayerNorm(8)
        self.classifier = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.classifier(self.norm(self.block(self.proj_in(x))))


def test_layers_heatmap_rows_follow_the_model_order_the_hooks_send(live, client):
    import txwatch_hooks

    torch.manual_seed(0)
    model = Net()
    order = [name for name, _ in model.named_parameters()]
    assert order != sorted(order)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with txwatch_hooks.watch(model, opt, run="ordered", project="p", endpoint=live.url, grad_every=1,
                             update_every=2, system_interval_s=0, crash_hooks=False) as monitor:
        for _ in range(6):
            loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 6)), torch.randint(0, 2, (16,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.log(loss=loss)
    assert get(client, "/api/v1/runs/p/ordered")["info"]["layers"] == order
    for metric in ("grad_norm", "update_ratio", "param_norm"):
        hm = get(client, "/api/v1/runs/p/ordered/layers", metric=metric)
        assert hm["layers"] == order, metric
        assert len(hm["values"]) == len(order)


def test_layers_heatmap_keeps_each_row_with_its_values_and_puts_unknown_layers_last(client):
    # Sent by hand: the model order names three layers, a fourth arrives that it does not name.
    order = ["stem.weight", "body.0.weight", "body.1.weight"]
    series = {f"grad_norm/{name}": [[s, T0 + s, 1.0 + i] for s in range(10)]
              for i, name in enumerate(["body.0.weight", "body.1.weight", "extra.weight", "stem.weight"])}
    post(client, batch(run_info={"layers": order}, series=series))
    hm = get(client, "/api/v1/runs/p/r/layers", metric="grad_norm")
    assert hm["layers"] == [*order, "extra.weight"]
    assert [row[0] for row in hm["values"]] == [4.0, 1.0, 2.0, 3.0]


def test_a_bad_layer_order_is_refused_naming_the_field(client):
    r = post(client, batch(run_info={"layers": ["ok.weight", "no spaces allowed"]}, series=steps("loss", 0, 2)))
    assert r.status_code == 422 and "run_info" in r.text and "layers" in r.text, r.text
    r = post(client, batch(run_info={"layers": ["l"] * 10_001}, series=steps("loss", 0, 2)))
    assert r.status_code == 422 and "layers" in r.text


@pytest.mark.slow
def test_nan_loss_is_diagnosed_and_listed(client):
    post(client, batch(series={"loss": [[s, T0 + s, 2.0 if s < 20 else math.nan] for s in range(25)]}))
    diags = get(client, "/api/v1/diagnoses", run="r")["diagnoses"]
    assert "loss-nonfinite" in {d["rule"] for d in diags}, diags
    d = next(d for d in diags if d["rule"] == "loss-nonfinite")
    assert d["run"] == "r" and d["project"] == "p" and d["state"] == "firing" and d["step"] == 20
    assert d["layer"] is None and d["symptom"] and d["cause"] and d["fix"]
    assert get(client, "/api/v1/diagnoses", severity=d["severity"], state="firing")["diagnoses"]
    assert get(client, "/api/v1/diagnoses", rule="dead-layer")["diagnoses"] == []
    assert get(client, "/api/v1/runs/p/r")["firing"][d["severity"]] == 1


@pytest.mark.slow
def test_a_run_s_incidents_lead_with_the_root_cause(client):
    lr = [[s, T0 + s, 3e-3 if s < 150 else 0.39] for s in range(1, 200)]  # a schedule bug: 130x at step 150
    loss = [[s, T0 + s, 1.0 if s < 157 else math.inf] for s in range(1, 200)]
    post(client, batch(run="jumped", series={"lr/0": lr, "loss": loss}))
    (incident,) = get(client, "/api/v1/runs/p/jumped/incidents")["incidents"]
    assert incident["primary"]["rule"] == "lr-jump" and incident["primary"]["first_step"] == 150
    assert incident["fix"][0].startswith("Check the scheduler")
    assert [c["rule"] for c in incident["consequences"]] == ["loss-nonfinite"]
    assert incident["state"] == "open" and incident["severity"] == "critical"
    assert client.get("/api/v1/runs/p/nope/incidents").status_code == 404


def test_diagnosis_filters_refuse_what_no_run_or_rule_is_called(client):
    r = client.get("/api/v1/diagnoses", params={"run": "p/r/extra"})
    assert r.status_code == 422
    detail = r.json()["details"][0]
    assert detail["field"] == "query.run" and "project/run" in detail["problem"], r.text
    r = client.get("/api/v1/diagnoses", params={"rule": "Loss NaN\x00"})
    assert r.status_code == 422
    detail = r.json()["details"][0]
    assert detail["field"] == "query.rule" and "loss-nonfinite" in detail["problem"], r.text
    assert client.get("/api/v1/diagnoses", params={"run": "p/r", "rule": "loss-nonfinite"}).status_code == 200
