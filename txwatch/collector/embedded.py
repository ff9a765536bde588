"""Embedded mode: the collector inside the training process, on the local database (no daemon needed).

``txwatch_hooks`` calls ``open_embedded()`` when no endpoint is configured and the ``txwatch`` package is
importable; its transport then hands batches (plain dicts, as on the wire) to ``send``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pydantic import ValidationError

from txwatch.wire.batch import Batch
from txwatch.wire.problems import batch_error

log = logging.getLogger(__name__)

DEFAULT_SEND_TIMEOUT_S = 10.0


class EmbeddedCollector:
    """A collector with its rule engine, alerts and background jobs, in this process.

    ``send(batch, timeout_s)`` returns True when the batch is stored (or was already: a replay) and False
    when it was not (invalid: see ``last_error``; or the database did not answer in time: retry later).
    """

    def __init__(self, services: Any, scheduler: Any = None):
        self.services = services
        self.scheduler = scheduler
        self.last_error: str | None = None
        self.last_status: int | None = None  # HTTP-like: 200 stored, 422 invalid, 503 database trouble
        # one writer thread: a send that times out keeps running there, and a replay of it is a duplicate
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="txwatch.embedded")
        self._closed = False
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def send(self, batch: dict, timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> bool:
        if self._closed:
            self._fail(503, "the embedded collector is closed")
            return False
        try:
            parsed = Batch.model_validate(batch)
        except ValidationError as exc:
            _, _, message, _ = batch_error(exc.errors(include_url=False))
            self._fail(422, message)
            return False
        try:
            self._pool.submit(self.services.collector.ingest, parsed).result(timeout=timeout_s)
        except FutureTimeout:
            self._fail(503, f"the database did not store the batch within {timeout_s} s")
            return False
        except Exception as exc:
            self._fail(503, f"could not store the batch: {exc.__class__.__name__}: {exc}")
            return False
        self.last_status, self.last_error = 200, None
        return True

    def _fail(self, status: int, message: str) -> None:
        self.last_status, self.last_error = status, message
        key = message[:120]
        if key not in self._logged:  # once per kind of problem, not once per batch
            self._logged.add(key)
            log.warning("embedded collector: %s", message)

    def flush(self, timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> bool:
        """Wait for accepted writes and send due notifications (e.g. before the process exits)."""
        try:
            self._pool.submit(lambda: None).result(timeout=timeout_s)
            if self.services.alerting is not None:
                self.services.alerting.dispatch_due()
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Finish accepted writes, send what is due, stop the jobs and release the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True)
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        if self.services.alerting is not None:
            try:
                self.services.alerting.dispatch_due()
            except Exception:
                log.exception("sending the last notifications failed")
        self.services.close()


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
    from txwatch.scheduler import Scheduler
    from txwatch.services import build_services
    from txwatch.settings import load_settings

    # embedded mode listens on nothing, so a TXWATCH_HOST meant for a daemon must not stop it
    settings = load_settings(db_url=db_url, host="127.0.0.1")
    services = build_services(settings, console=console)
    scheduler = None
    if jobs:
        scheduler = Scheduler(services, retention=False)
        scheduler.start()
    return EmbeddedCollector(services, scheduler)
