"""/metrics, /healthz, /readyz on a live daemon; docs/metrics.md lists exactly what is exported."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from tests.live import start_live
from tests.api.test_ingest import post
from tests.collector.batches import T0, batch, steps
from txwatch.store.models import Run

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def samples(client) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run_samples(client, run: str) -> dict[tuple, float]:
    return {k: v for k, v in samples(client).items() if ("run", run) in k[1]}


def test_active_runs_export_latest_values_but_never_layers(client):
    series = steps("loss", 0, 10) | steps("grad_norm_total", 0, 10, lambda s: 3.0) \
        | steps("grad_norm/fc.weight", 0, 10) | steps("gpu_util/cuda0", 0, 10, lambda s: 87.0) \
        | steps("gpu_mem_used/cuda0", 0, 10, lambda s: 1e9) | steps("rank1.gpu_util/cuda1", 0, 3, lambda s: 50.0)
    post(client, batch(series=series, client={"dropped": {"queue_full": 4}, "spooled_batches": 0}))
    got = run_samples(client, "r")
    lab = (("project", "p"), ("rank", "0"), ("run", "r"))
    assert got[("txwatch_run_loss", lab)] == 0.1
    assert got[("txwatch_run_grad_norm_total", lab)] == 3.0
    assert got[("txwatch_run_gpu_utilization_percent", tuple(sorted(lab + (("device", "cuda0"),))))] == 87.0
    assert got[("txwatch_run_gpu_utilization_percent",
                tuple(sorted((("project", "p"), ("rank", "1"), ("run", "r"), ("device", "cuda1")))))] == 50.0
    assert got[("txwatch_run_step", (("project", "p"), ("run", "r")))] == 9
    assert got[("txwatch_run_client_dropped", (("project", "p"), ("reason", "queue_full"), ("run", "r")))] == 4
    assert not any("fc.weight" in str(k) for k in got)
    post(client, batch(seq=1, series={"loss": [[10, T0, math.nan]]}))
    assert math.isnan(run_samples(client, "r")[("txwatch_run_loss", lab)])


def test_finished_runs_leave_the_export_after_a_while(db_url):
    live = start_live(db_url=db_url, finished_run_export_s=60)
    try:
        with live.client() as c:
            post(c, batch(series=steps("loss", 0, 3)))
            now = datetime.now(timezone.utc).timestamp()
            post(c, batch(seq=1, events=[{"kind": "end", "time": now, "status": "finished"}]))
            assert run_samples(c, "r")[("txwatch_run_running", (("project", "p"), ("run", "r")))] == 0
            with live.daemon.services.session_factory.begin() as s:
                s.execute(update(Run).values(ended=datetime.now(timezone.utc) - timedelta(seconds=61),
                                             last_seen=datetime.now(timezone.utc) - timedelta(seconds=61)))
            assert run_samples(c, "r") == {}
    finally:
        live.stop()


def test_docs_list_every_exported_metric(client):
    post(client, batch(series=steps("loss", 0, 3)))
    documented = set(re.findall(r"`(txwatch_[a-z_]+)`", DOC.read_text()))
    exported = set()
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        names = {s.name for s in fam.samples} or {fam.name + ("_total" if fam.type == "counter" else "")}
        for n in names:
            if n.endswith("_created"):
                continue
            exported.add(re.sub(r"_(bucket|sum|count)$", "", n) if fam.type == "histogram" else n)
    from txwatch.api.run_metrics import EXPORTED_NAMES

    assert exported <= documented, f"exported but not in docs/metrics.md: {sorted(exported - documented)}"
    assert set(EXPORTED_NAMES) <= documented


def test_health_and_readiness(client, live):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ok"
    # a database behind the code's schema is not ready
    with live.daemon.services.db.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    r = client.get("/readyz")
    assert r.status_code == 503 and "txwatch db upgrade" in r.json()["detail"]
