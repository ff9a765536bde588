"""Background jobs on SQLite and PostgreSQL: liveness, retention, checkpoint, failures counted not raised."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from tests.collector.batches import batch, steps
from txwatch.wire.batch import Batch
from txwatch.collector.scheduler import Scheduler
from txwatch.collector.services import build_services
from txwatch.settings import Settings
from txwatch.store import downsample, queries
from txwatch.store.models import Point, Run, Series


@pytest.fixture
def services(db_url):
    s = build_services(Settings(db_url=db_url, stall_after_s=60, retention_days=30))
    yield s
    s.close()


def ingest(services, b):
    return services.collector.ingest(Batch.model_validate(b))


def status_of(services, run):
    with services.session_factory() as s:
        return s.scalar(select(Run.status).where(Run.name == run))


def test_silent_runs_stall_dead_local_ones_vanish_and_talking_revives(services):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    ingest(services, batch(run="remote", run_info={"host": "elsewhere", "pid": os.getpid()}, series=steps("loss", 0, 2)))
    ingest(services, batch(run="gone", run_info={"host": host, "pid": dead.pid}, series=steps("loss", 0, 2)))
    ingest(services, batch(run="alive", run_info={"host": host, "pid": os.getpid()}, series=steps("loss", 0, 2)))
    ingest(services, batch(run="fresh", series=steps("loss", 0, 2)))
    with services.session_factory.begin() as s:
        s.execute(update(Run).where(Run.name != "fresh")
                  .values(last_seen=datetime.now(timezone.utc) - timedelta(minutes=5)))
    sched = Scheduler(services)
    assert sched.liveness() == {"stalled": 2, "vanished": 1}
    assert [status_of(services, r) for r in ("remote", "gone", "alive", "fresh")] == \
        ["stalled", "vanished", "stalled", "running"]
    with services.session_factory() as s:
        assert s.scalar(select(Run.end_reason).where(Run.name == "gone")) == "vanished"
    ingest(services, batch(run="remote", seq=1, series=steps("loss", 2, 3)))
    assert status_of(services, "remote") == "running"


def test_retention_thins_old_raw_points_and_charts_still_show_them(services):
    import time

    now = time.time()
    old, new = now - 40 * 86400, now
    ingest(services, batch(series={"loss": [[s, old + s, float(s % 50)] for s in range(5000)]
                                   + [[s, new, 1.0] for s in range(5000, 5100)]}))
    sched = Scheduler(services)
    assert sched.retention() == 5000
    assert sched.retention() == 0  # idempotent
    with services.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Point)) == 100
        series = s.scalar(select(Series))
        assert series.downsampled_before == 5000 and series.points == 5100
        run, _ = queries.find_run(s, "r")
        pts = downsample.series_points(s, series, max_points=400)["points"]
        assert min(p["step"] for p in pts) < 100 and max(p["value"] for p in pts) == 49.0
        assert len(downsample.all_points(s, series)) > 100  # below the mark: the finest summaries


def test_jobs_are_scheduled_and_failures_are_counted_not_raised(services):
    sched = Scheduler(services)
    ids = set(sched.job_ids())
    assert {"liveness", "retention"} <= ids
    assert ("checkpoint" in ids) == (services.db.dialect.name == "sqlite")
    if services.db.dialect.name == "sqlite":
        sched.checkpoint()
    from txwatch.collector.scheduler import timed_job
    from txwatch.telemetry import REGISTRY

    before = REGISTRY.get_sample_value("txwatch_job_failures_total", {"job": "boom"}) or 0
    assert timed_job("boom", lambda: 1 / 0)() is None
    assert REGISTRY.get_sample_value("txwatch_job_failures_total", {"job": "boom"}) == before + 1
    sched.start()
    sched.shutdown()


def test_alerting_jobs_are_added_with_their_triggers(db_url):
    from txwatch.alerts.digest import JOB_ID

    s = build_services(Settings(db_url=db_url, digest_cron="0 9 * * *", slack_webhook_url="http://127.0.0.1:9/hook"))
    try:
        sched = Scheduler(s)
        assert {"dispatch", "liveness", JOB_ID} <= set(sched.job_ids())
        sched.start()
        job = sched._sched.get_job(JOB_ID)  # noqa: SLF001 (the trigger is what this test is about)
        assert job.next_run_time.hour == 9 and job.next_run_time.minute == 0
        sched.shutdown()
    finally:
        s.close()
