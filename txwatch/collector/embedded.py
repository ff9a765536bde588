"""Embedded mode: the collector inside the training process, on the local database (no daemon needed).

This module wires it (services, background jobs) and shares one per database in a process; the collector
itself is ``txwatch.ingest.in_process.EmbeddedCollector``.

``txwatch_hooks`` calls ``open_embedded()`` when no endpoint is configured and the ``txwatch`` package is
importable; its transport then hands batches (plain dicts, as on the wire) to ``send``.
"""

from __future__ import annotations

import threading
from typing import Any

from txwatch.ingest.in_process import DEFAULT_SEND_TIMEOUT_S, EmbeddedCollector


class _SharedHandle:
    """One monitor's reference to the process's shared embedded collector; ``close()`` releases it, and the
    last release closes the collector. Several monitors in one process (the demo's runs, a sweep in threads)
    so share one database connection pool, one rule engine and one set of background jobs."""

    def __init__(self, key: tuple, collector: EmbeddedCollector):
        self._key = key
        self._collector = collector
        self._released = False

    @property
    def services(self) -> Any:
        return self._collector.services

    @property
    def last_status(self) -> int | None:
        return self._collector.last_status

    @property
    def last_error(self) -> str | None:
        return self._collector.last_error

    def send(self, batch: dict, timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> bool:
        return self._collector.send(batch, timeout_s)

    def stored_run(self, project: str, name: str) -> dict[str, Any] | None:
        """The stored run ``project/name`` as ``{"status", "job"}``, None when there is none (``watch(resume=)``)."""
        with self.services.session_factory() as session:
            return _stored_run(session.connection(), project, name)

    def flush(self, timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> bool:
        return self._collector.flush(timeout_s)

    def close(self) -> None:
        with _SHARED_LOCK:
            if self._released:
                return
            self._released = True
            entry = _SHARED.get(self._key)
            last = entry is not None and entry[0] is self._collector and entry[1] <= 1
            if last:
                del _SHARED[self._key]
            elif entry is not None:
                entry[1] -= 1
        if last:
            self._collector.close()


_SHARED: dict[tuple, list] = {}  # (db_url, jobs) -> [EmbeddedCollector, references]
_SHARED_LOCK = threading.Lock()  # also serializes opening: Alembic's upgrade is not safe to run concurrently


def open_embedded(db_url: str | None = None, *, console: Any = True, jobs: bool = True) -> Any:
    """A handle on the in-process collector for ``db_url`` (default: ``TXWATCH_DB_URL`` or the local SQLite
    database), shared by every caller in this process asking for the same database with the default console.

    Applies migrations, builds the rule engine and console alerts (``console``: True logs diagnoses, or a
    callback ``(text, payload)``), and starts the background jobs (time-based rules, alert dispatch).
    Raises ``SettingsError``/``DatabaseError``/``RuleError`` on configuration problems, naming them.
    """
    import os

    if console is not True:  # a private console callback: a private collector
        return _open_collector(db_url, console=console, jobs=jobs)
    key = (db_url or os.environ.get("TXWATCH_DB_URL") or "", jobs)
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is None or entry[0]._closed:
            entry = _SHARED[key] = [_open_collector(db_url, console=console, jobs=jobs), 0]
        entry[1] += 1
        return _SharedHandle(key, entry[0])


def stored_run(project: str, name: str, db_url: str | None = None) -> dict[str, Any] | None:
    """The run ``project/name`` in the local database (``db_url``, default ``TXWATCH_DB_URL`` or the local
    SQLite file) as ``{"status", "job"}``, None when there is none; read before the collector opens, for
    ``watch(resume=...)``. A database not created yet holds no run."""
    import os

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from txwatch.store.db import make_engine, normalize_url

    url = normalize_url(db_url or os.environ.get("TXWATCH_DB_URL"))
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and (not u.database or u.database == ":memory:"
                                              or not os.path.exists(u.database)):
        return None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            try:
                return _stored_run(conn, project, name)
            except (OperationalError, ProgrammingError) as exc:
                if "runs" in str(exc) or "projects" in str(exc):  # no schema yet: nothing stored
                    return None
                raise
    finally:
        engine.dispose()


def _stored_run(conn: Any, project: str, name: str) -> dict[str, Any] | None:
    from sqlalchemy import select

    from txwatch.store.models import Project, Run

    row = conn.execute(
        select(Run.status, Run.info).join(Project, Run.project_id == Project.id)
        .where(Project.name == project, Run.name == name)
    ).first()
    if row is None:
        return None
    return {"status": row.status, "job": (row.info or {}).get("job")}


def _open_collector(db_url: str | None, *, console: Any, jobs: bool) -> EmbeddedCollector:
    from txwatch.collector.scheduler import Scheduler
    from txwatch.collector.services import build_services
    from txwatch.settings import load_settings

    # embedded mode listens on nothing, so a TXWATCH_HOST meant for a daemon must not stop it
    settings = load_settings(db_url=db_url, host="127.0.0.1")
    services = build_services(settings, console=console)
    scheduler = None
    if jobs:
        scheduler = Scheduler(services, retention=False)
        scheduler.start()
    return EmbeddedCollector(services, scheduler)
