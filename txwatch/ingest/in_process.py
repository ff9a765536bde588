"""The in-process collector of embedded mode: batches handed over as plain dicts, validated, stored in this process.

Opened and shared by ``txwatch.collector.embedded`` (the composition root), which gives it its services.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from pydantic import ValidationError

from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.wire.problems import batch_error

log = logging.getLogger(__name__)

DEFAULT_SEND_TIMEOUT_S = 10.0


class Parts(Protocol):
    """What the embedded collector uses of the composed services."""

    collector: Collector
    alerting: Any  # txwatch.alerts.Alerting, or None when alerting is off

    def close(self) -> None: ...


class EmbeddedCollector:
    """A collector with its rule engine, alerts and background jobs, in this process.

    ``send(batch, timeout_s)`` returns True when the batch is stored (or was already: a replay) and False
    when it was not (invalid: see ``last_error``; or the database did not answer in time: retry later).
    """

    def __init__(self, services: Parts, scheduler: Any = None):
        self.services = services
        self.scheduler = scheduler
        self.last_error: str | None = None
        self.last_status: int | None = None  # HTTP-like: 200 stored, 422 invalid, 503 database trouble
        # one writer thread: a send that times out keeps running there, and a replay of it is a duplicate
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="txwatch.embedded")
        self._closed = False
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def send(self, batch: dict[str, Any], timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> bool:
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
