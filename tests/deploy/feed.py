"""Feeding a live collector: a small real training run instrumented with the hooks, and wire-format batches
(docs/design.md) for what a CPU-only test machine cannot produce itself (GPU figures) or for sending one run's
batches to two collectors in turn."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

INGEST = "/api/v1/ingest"


@dataclass
class TrainedRun:
    project: str
    run: str
    losses: list[float] = field(default_factory=list)  # loss logged at steps 1..N


def train_with_hooks(endpoint: str, token: str, project: str, run: str, spool_dir: Path, steps: int = 40) -> TrainedRun:
    """Train a tiny MLP for ``steps`` optimizer steps under ``txwatch_hooks.watch`` against ``endpoint``; the
    monitor's close() delivers everything before this returns."""
    import torch
    import txwatch_hooks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 8)
    y = x.sum(dim=1, keepdim=True)
    result = TrainedRun(project, run)
    # crash_hooks off: the test process's excepthook and atexit are pytest's business, not this run's.
    with txwatch_hooks.watch(model, optimizer, run=run, project=project, endpoint=endpoint, token=token,
                             config={"lr": 0.05}, spool_dir=spool_dir, crash_hooks=False) as monitor:
        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            monitor.log(loss=loss)
            result.losses.append(loss.item())
    return result


def batch(project: str, run: str, seq: int, series: dict[str, list[list[float]]], *, events=(), run_info=None,
          rank: int = 0) -> dict:
    """One wire-format batch (schema_version 1)."""
    body = {
        "schema_version": 1,
        "project": project,
        "run": run,
        "seq": seq,
        "rank": rank,
        "sent_at": time.time(),
        "series": series,
        "events": list(events),
    }
    if run_info is not None:
        body["run_info"] = run_info
    return body


def start_event(t: float | None = None) -> dict:
    return {"kind": "start", "time": t or time.time()}


def run_info(host: str = "test-host", device: str = "cpu") -> dict:
    return {"config": {"lr": 0.05}, "host": host, "pid": 4242, "world_size": 1, "started": time.time(),
            "hooks_version": "0.1.0", "torch_version": "2.13.0", "device": device}


def post(client: httpx.Client, base_url: str, token: str, body: dict) -> dict:
    # json.dumps, not httpx's json=: the wire format carries NaN/Infinity literals, which httpx refuses to encode.
    r = client.post(base_url + INGEST, content=json.dumps(body), timeout=30.0,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code == 200, f"{base_url}{INGEST} answered {r.status_code}: {r.text[:500]}"
    return r.json()


def gpu_host_batches(project: str, run: str, steps: Iterable[int] = range(1, 21)) -> list[dict]:
    """Batches as a GPU host's hooks send them (loss, total grad norm, NVML figures for cuda0)."""
    now = time.time()
    series: dict[str, list[list[float]]] = {}
    for step in steps:
        t = now - 30 + step
        for name, value in {
            "loss": 2.0 / (1 + 0.1 * step),
            "grad_norm_total": 0.5 + 0.01 * step,
            "gpu_util/cuda0": 90.0 + (step % 5),
            "gpu_mem_used/cuda0": 12e9 + step * 1e6,
            "gpu_mem_total/cuda0": 80e9,
        }.items():
            series.setdefault(name, []).append([step, t, value])
    return [batch(project, run, 0, series, events=[start_event(now - 31)],
                  run_info=run_info(host="gpu-node-1", device="cuda:0"))]


def nan_run_batches(project: str, run: str, n_batches: int = 6, steps_per_batch: int = 10,
                    nan_from_step: int = 25) -> list[dict]:
    """A run whose loss falls, then turns NaN at ``nan_from_step`` (the loss-nonfinite rule must fire)."""
    now = time.time()
    out = []
    for b in range(n_batches):
        series: dict[str, list[list[float]]] = {"loss": [], "grad_norm_total": []}
        for step in range(b * steps_per_batch + 1, (b + 1) * steps_per_batch + 1):
            t = now - 60 + step * 0.1
            loss = math.nan if step >= nan_from_step else 2.0 / (1 + 0.1 * step)
            series["loss"].append([step, t, loss])
            series["grad_norm_total"].append([step, t, 0.5])
        events = [start_event(now - 61)] if b == 0 else [{"kind": "heartbeat", "time": now, "step": step}]
        out.append(batch(project, run, b, series, events=events, run_info=run_info() if b == 0 else None))
    return out

