"""Fixtures for the alerts tests: a migrated database (SQLite and PostgreSQL), diagnoses inserted directly (as the
rule engine would), a controllable clock, and the Slack stand-in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from tests.alerts.slack_standin import TOKEN, SlackStandin
from txwatch.settings import Settings
from txwatch.store.db import session_factory
from txwatch.store.models import Diagnosis, Notification, Project, Run

T0 = datetime(2025, 11, 29, 9, 0, 0, tzinfo=timezone.utc)


class FakeClock:
    """A clock the test moves by hand (the outbox and dispatcher read it; nothing sleeps)."""

    def __init__(self, start: datetime = T0):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(timezone.utc).replace(microsecond=0))


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def _alerts_db(request, tmp_path_factory):
    """One migrated database per backend for the whole alerts suite (migrating one per test costs ~1 s each on
    a busy machine); ``alerts_db`` empties it before every test."""
    from tests.conftest import _pg_base, create_pg_database, drop_pg_database
    from txwatch.store.db import make_engine, upgrade

    if request.param == "sqlite":
        url, name = f"sqlite:///{tmp_path_factory.mktemp('alerts-db') / 'txwatch.db'}", None
    else:
        admin = request.getfixturevalue("pg_admin")
        name = create_pg_database(admin)
        url = f"{_pg_base()}/{name}"
    engine = make_engine(url)
    upgrade(engine)
    yield url, engine
    engine.dispose()
    if name is not None:
        drop_pg_database(request.getfixturevalue("pg_admin"), name)


@pytest.fixture
def alerts_db(_alerts_db):
    """(url, engine) of an empty, migrated database: SQLite and PostgreSQL."""
    from sqlalchemy import text

    from txwatch.store.models import Base

    url, engine = _alerts_db
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for t in tables:
                conn.execute(text(f"DELETE FROM {t}"))
    return url, engine


@pytest.fixture
def sessions(alerts_db):
    return session_factory(alerts_db[1])


@pytest.fixture
def slack():
    with SlackStandin() as standin:
        yield standin


def slack_settings(slack: SlackStandin, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_token": TOKEN, "slack_channel": "#alerts", "slack_base_url": slack.base_url,
        "group_window_s": 0, "repeat_interval_s": 600,
    }
    values.update(overrides)
    return Settings(**values)


def make_run(sessions, run: str = "bert-ft-42", project: str = "search-ranking") -> int:
    with sessions() as s, s.begin():
        proj = s.scalar(select(Project).where(Project.name == project))
        if proj is None:
            proj = Project(name=project, created=T0)
            s.add(proj)
            s.flush()
        r = s.scalar(select(Run).where(Run.project_id == proj.id, Run.name == run))
        if r is None:
            r = Run(project_id=proj.id, name=run, started=T0, last_seen=T0, status="running", config={}, info={},
                    client_stats={})
            s.add(r)
            s.flush()
        return r.id


DEFAULT_DIAG: dict[str, Any] = {
    "rule_id": "loss-nonfinite",
    "severity": "critical",
    "symptom": "Loss became NaN",
    "cause": "The learning rate is too high for this model: updates overshoot until values overflow.",
    "fix": ["Lower the learning rate 10x", "Enable gradient clipping (max_norm=1.0)"],
    "evidence": {"loss": "nan", "grad_norm_total": 3.1e4, "lr/0": 0.5},  # PostgreSQL json rejects NaN
    "reason": "loss was nan at step 412 (a finite value is expected)",
    "labels": {"team": "ranking"},
    "layer": "",
}


def fire(sessions, alerting, *, run: str = "bert-ft-42", project: str = "search-ranking", step: int = 412,
         at: datetime | None = None, **fields: Any) -> int:
    """Insert a firing diagnosis and record its fire notification in the same transaction (as the engine does)."""
    run_id = make_run(sessions, run, project)
    values = {**DEFAULT_DIAG, **fields}
    at = at or datetime.now(timezone.utc)
    with sessions() as s, s.begin():
        d = Diagnosis(run_id=run_id, episode=values.pop("episode", 1), state="firing", first_step=step, last_step=step,
                      first_seen=at, last_seen=at, **values)
        s.add(d)
        s.flush()
        alerting.outbox.record(s, d, "fire")
        return d.id


def change(sessions, alerting, diag_id: int, kind: str, **fields: Any) -> int:
    """Apply ``fields`` to a diagnosis and record ``kind`` ("update" or "resolve") in the same transaction."""
    with sessions() as s, s.begin():
        d = s.get(Diagnosis, diag_id)
        if kind == "resolve":
            d.state = "resolved"
            d.resolved_step = fields.pop("resolved_step", (d.last_step or 0) + 50)
            d.resolved_at = fields.pop("resolved_at", datetime.now(timezone.utc))
        for k, v in fields.items():
            setattr(d, k, v)
        return alerting.outbox.record(s, d, kind)


def rows(sessions, **where: Any) -> list[Notification]:
    with sessions() as s:
        q = select(Notification).order_by(Notification.id)
        for k, v in where.items():
            q = q.where(getattr(Notification, k) == v)
        return list(s.scalars(q))


@pytest.fixture
def api_server(alerts_db, sessions):
    """A real HTTP server (uvicorn, port 0) serving the silences router with a bearer token; yields its URL."""
    import threading

    import uvicorn
    from fastapi import FastAPI

    from txwatch.api.silences import router
    from txwatch.collector.services import Services

    app = FastAPI()
    app.state.services = Services(settings=Settings(token="api-token-123"), db=alerts_db[1], session_factory=sessions,
                                  collector=None)
    app.include_router(router)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    import time

    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test API server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
