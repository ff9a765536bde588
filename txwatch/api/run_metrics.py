"""The run figures of ``/metrics``: a bounded set of latest values per active run, read from the database at scrape.

Registered on ``txwatch.telemetry.REGISTRY`` (where every instrument lives). The names are listed in
docs/metrics.md (the Grafana dashboard and Prometheus rules are checked against that list). Per-layer series
are never exported (one label value per parameter would swamp Prometheus).
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as _PromCollector
from sqlalchemy.orm import Session, sessionmaker

from txwatch.settings import Settings
from txwatch.telemetry import INSTRUMENT_NAMES, REGISTRY

log = logging.getLogger(__name__)

# At most this many runs are exported at once (the most recently seen): a bounded number of series per
# scrape whatever the number of runs in the database.
MAX_EXPORTED_RUNS = 200
MAX_DEVICES_PER_RUN = 16

# -- per-run latest values --------------------------------------------------------------------------------

_RANK = re.compile(r"^rank(\d+)\.(.+)$")
# series name -> (metric name, help); one gauge per run
SCALARS = {
    "loss": ("txwatch_run_loss", "Latest training loss."),
    "val_loss": ("txwatch_run_val_loss", "Latest validation loss."),
    "grad_norm_total": ("txwatch_run_grad_norm_total", "Latest total gradient L2 norm (before clipping)."),
    "update_ratio_max": ("txwatch_run_update_ratio_max", "Latest largest per-parameter update ratio."),
    "step_time": ("txwatch_run_step_time_seconds", "Latest seconds per optimizer step."),
    "data_wait_share": ("txwatch_run_data_wait_share", "Latest share of the step spent waiting for data."),
}
# per-device series prefix -> (metric name, help); labelled by device (and rank)
DEVICE = {
    "gpu_util": ("txwatch_run_gpu_utilization_percent", "Latest GPU utilization (NVML), percent."),
    "gpu_mem_used": ("txwatch_run_gpu_memory_used_bytes", "Latest GPU memory in use (NVML), bytes."),
    "gpu_mem_total": ("txwatch_run_gpu_memory_total_bytes", "GPU memory size (NVML), bytes."),
    "cuda_mem_allocated": ("txwatch_run_cuda_memory_allocated_bytes", "Latest torch.cuda allocated bytes."),
    "cuda_mem_reserved": ("txwatch_run_cuda_memory_reserved_bytes", "Latest torch.cuda reserved bytes."),
}
HOST = {
    "cpu_util": ("txwatch_run_cpu_percent", "Latest training-process CPU percent."),
    "rss": ("txwatch_run_rss_bytes", "Latest training-process resident memory, bytes."),
}
RUN_METRICS = {
    "txwatch_run_step": "Highest step seen.",
    "txwatch_run_running": "1 while the run is running, 0 once it finished, crashed, stalled or vanished.",
    "txwatch_run_last_seen_timestamp_seconds": "When the run last sent anything (unix seconds).",
    "txwatch_run_diagnoses_firing": "Diagnoses firing now, by severity.",
    "txwatch_run_client_dropped": "Items the training-side hooks dropped, by reason (as reported by them).",
    "txwatch_run_learning_rate": "Latest learning rate, by optimizer param group.",
}
SEVERITIES = ("critical", "warning", "info")


class RunSource(Protocol):
    """What the exporter reads: the collector's settings and its database (the composition root's parts)."""

    settings: Settings
    session_factory: sessionmaker[Session]


class RunExporter(_PromCollector):
    """Scrape-time latest values of active runs, read from the database of the attached services.

    Active: running or stalled, or ended less than ``settings.finished_run_export_s`` ago.
    """

    def __init__(self) -> None:
        self._sources: list[RunSource] = []
        self._lock = threading.Lock()
        self._failed_once = False
        self._reads: Any = None  # a store.db.OneAtATime, made at the first scrape

    def attach(self, services: RunSource) -> None:
        with self._lock:
            self._sources.append(services)

    def detach(self, services: RunSource) -> None:
        with self._lock:
            self._sources = [s for s in self._sources if s is not services]

    def describe(self):
        return []  # no fixed set: computed at scrape (and no database read at registration)

    def collect(self):
        with self._lock:
            services = self._sources[-1] if self._sources else None
        if services is None:
            return []
        try:
            return self._families(services)
        except Exception:
            if not self._failed_once:
                self._failed_once = True
                log.exception("could not read run values for /metrics (logged once)")
            return []

    def _families(self, services: RunSource) -> list[GaugeMetricFamily]:
        from txwatch.store import queries
        from txwatch.store.db import OneAtATime

        if self._reads is None:
            self._reads = OneAtATime("metrics")
        now = datetime.now(timezone.utc)
        cutoff = now - timedelta(seconds=services.settings.finished_run_export_s)
        def read():
            with services.session_factory() as session:
                return queries.export_snapshot(session, cutoff, MAX_EXPORTED_RUNS)

        # a database that does not answer costs this scrape its run figures, not the scrape (DatabaseStuck)
        snap = self._reads.call(read, services.settings.db_timeout_s)
        fams: dict[str, GaugeMetricFamily] = {}

        def fam(name: str, help_: str, labels: list[str]) -> GaugeMetricFamily:
            if name not in fams:
                fams[name] = GaugeMetricFamily(name, help_, labels=labels)
            return fams[name]

        base = ["project", "run"]
        for metric, help_ in SCALARS.values():
            fam(metric, help_, base + ["rank"])
        for metric, help_ in DEVICE.values():
            fam(metric, help_, base + ["rank", "device"])
        for metric, help_ in HOST.values():
            fam(metric, help_, base + ["rank"])
        fam("txwatch_run_step", RUN_METRICS["txwatch_run_step"], base)
        fam("txwatch_run_running", RUN_METRICS["txwatch_run_running"], base)
        fam("txwatch_run_last_seen_timestamp_seconds", RUN_METRICS["txwatch_run_last_seen_timestamp_seconds"], base)
        fam("txwatch_run_diagnoses_firing", RUN_METRICS["txwatch_run_diagnoses_firing"], base + ["severity"])
        fam("txwatch_run_client_dropped", RUN_METRICS["txwatch_run_client_dropped"], base + ["reason"])
        fam("txwatch_run_learning_rate", RUN_METRICS["txwatch_run_learning_rate"], base + ["group"])
        fams["txwatch_outbox_pending"] = GaugeMetricFamily(
            "txwatch_outbox_pending", "Notifications waiting to be sent (outbox queue depth)."
        )
        fams["txwatch_outbox_pending"].add_metric([], snap.outbox_pending)
        fams["txwatch_runs_active"] = GaugeMetricFamily(
            "txwatch_runs_active", "Active runs whose latest values this scrape exports (bounded)."
        )
        fams["txwatch_runs_active"].add_metric([], len(snap.runs))

        for run in snap.runs:
            lv = [run.project, run.name]
            fams["txwatch_run_step"].add_metric(lv, run.steps)
            fams["txwatch_run_running"].add_metric(lv, 1.0 if run.status == "running" else 0.0)
            fams["txwatch_run_last_seen_timestamp_seconds"].add_metric(lv, run.last_seen.timestamp())
            firing = snap.firing.get(run.id, {})
            for sev in SEVERITIES:
                fams["txwatch_run_diagnoses_firing"].add_metric(lv + [sev], firing.get(sev, 0))
            for reason, count in _dropped(run.client_stats).items():
                fams["txwatch_run_client_dropped"].add_metric(lv + [reason], count)
            devices = 0
            for name, value in snap.values.get(run.id, {}).items():
                rank = "0"
                m = _RANK.match(name)
                if m:
                    rank, name = m.group(1), m.group(2)
                base_name, _, dev = name.partition("/")
                if not dev:
                    if base_name in SCALARS:
                        fams[SCALARS[base_name][0]].add_metric(lv + [rank], value)
                    elif base_name in HOST:
                        fams[HOST[base_name][0]].add_metric(lv + [rank], value)
                elif base_name in DEVICE and devices < MAX_DEVICES_PER_RUN:
                    devices += 1
                    fams[DEVICE[base_name][0]].add_metric(lv + [rank, dev], value)
                elif base_name == "lr" and dev.isdigit() and int(dev) < MAX_DEVICES_PER_RUN:
                    fams["txwatch_run_learning_rate"].add_metric(lv + [dev], value)
        return list(fams.values())


def _dropped(stats: dict | None) -> dict[str, float]:
    """Drops summed over ranks, by reason, from the run's client_stats ({rank: {"dropped": {...}}})."""
    out: dict[str, float] = {}
    for per_rank in (stats or {}).values():
        if isinstance(per_rank, dict):
            for reason, n in (per_rank.get("dropped") or {}).items():
                if isinstance(n, (int, float)) and len(out) < 16:
                    out[str(reason)] = out.get(str(reason), 0) + n
    return out


RUN_EXPORTER = RunExporter()
REGISTRY.register(RUN_EXPORTER)

# every metric name this module can export, for docs/metrics.md and the tests that check it
EXPORTED_NAMES = sorted(
    {
        *INSTRUMENT_NAMES, "txwatch_outbox_pending",
        "txwatch_runs_active",
        *RUN_METRICS, *(m for m, _ in SCALARS.values()), *(m for m, _ in DEVICE.values()),
        *(m for m, _ in HOST.values()),
    }
)
