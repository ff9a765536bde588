"""The hooks against the real collector: the daemon over HTTP (SQLite and PostgreSQL), and embedded mode."""

from __future__ import annotations

import math

import httpx
import pytest
import torch

import txwatch_hooks
from txwatch_hooks import transport
from txwatch_hooks.testing import free_port
from tests.hooks.conftest import TinyNet, batch_of
from tests.live import start_live

pytestmark = pytest.mark.slow
QUIET = {"system_interval_s": 0, "heartbeat_s": 60.0, "crash_hooks": False, "schedule_delay_s": 0.05}


def _train(model, opt, monitor, steps, nan_from=None):
    for _ in range(steps):
        x, y = batch_of(seed=monitor.step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if nan_from is not None and monitor.step >= nan_from:
            loss = loss * float("nan")
        monitor.log(loss=loss)


def _series(url, run, name, project="default"):
    r = httpx.get(f"{url}/api/v1/runs/{project}/{run}/series/{name}", timeout=30)
    r.raise_for_status()
    body = r.json()
    return [(p["step"], p["value"]) for p in (body["points"] if isinstance(body, dict) else body)]


def test_daemon_goes_down_and_comes_back(db_url, tmp_path, monkeypatch):
    """Against the real collector: every step stored once, the run ends finished, across a restart."""
    monkeypatch.setattr(transport, "RETRY_BACKOFF_MAX_S", 0.3)
    port = free_port()
    live = start_live(db_url=db_url, port=port)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = txwatch_hooks.watch(model, opt, run="restart-survivor", project="hooks", endpoint=live.url,
                                  spool_dir=tmp_path, export_timeout_s=2.0, grad_every=5, update_every=10,
                                  config={"lr": 0.05}, **QUIET)
    try:
        _train(model, opt, monitor, 20)
        assert monitor.flush(10)
        live.stop()
        _train(model, opt, monitor, 20)  # collector down: spooled
        assert monitor.flush(0.5) is False
        live = start_live(db_url=db_url, port=port)
        _train(model, opt, monitor, 20)
        assert monitor.close(20)
        loss = _series(live.url, "restart-survivor", "loss", "hooks")
        assert [s for s, _ in loss] == list(range(1, 61))
        assert [s for s, _ in _series(live.url, "restart-survivor", "grad_norm_total", "hooks")] == \
            [1] + list(range(5, 61, 5))
        run = httpx.get(f"{live.url}/api/v1/runs/hooks/restart-survivor", timeout=30).json()
        assert run["status"] == "finished"
        assert run["config"] == {"lr": 0.05}
    finally:
        monitor.close(1)
        live.stop()


def test_embedded_mode_without_an_endpoint_stores_locally_and_diagnoses():
    """No endpoint, full package installed: the collector runs in-process on the default local database."""
    from sqlalchemy import select

    from txwatch.store.db import default_db_path, make_engine, session_factory
    from txwatch.store.models import Diagnosis, Run, Series

    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with txwatch_hooks.watch(model, opt, run="embedded-run", **QUIET) as monitor:
        assert "embedded" in monitor._transport._sender.describe()
        _train(model, opt, monitor, 30, nan_from=20)
    assert default_db_path().exists()
    engine = make_engine(None)
    try:
        with session_factory(engine)() as s:
            run = s.scalars(select(Run).where(Run.name == "embedded-run")).one()
            assert run.status == "finished" and run.steps == 30
            names = set(s.scalars(select(Series.name).where(Series.run_id == run.id)))
            assert {"loss", "grad_norm_total", "lr/0", "step_time"} <= names
            loss = s.scalars(select(Series).where(Series.run_id == run.id, Series.name == "loss")).one()
            assert loss.points == 30
            assert loss.last_value is None or math.isnan(loss.last_value)  # NaN is kept as NaN
            rules = set(s.scalars(select(Diagnosis.rule_id).where(Diagnosis.run_id == run.id)))
            assert "loss-nonfinite" in rules
    finally:
        engine.dispose()
