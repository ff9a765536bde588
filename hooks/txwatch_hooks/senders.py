"""Where sealed batches go: the collector over HTTP, the embedded collector in this process, or nowhere.

A sender returns a result instead of raising: OK (stored, or already stored), RETRY (keep it, try again
later; ``retry_after_s`` says when, if the collector did), TOO_LARGE (send it in smaller batches) or REJECTED (the
collector refused this batch for good; retrying cannot help).
"""

from __future__ import annotations

import enum
import http.client
import json
import logging
import urllib.parse
from typing import Any

from txwatch_hooks.guard import Guard
from txwatch_hooks.wire import HOOKS_VERSION

log = logging.getLogger(__name__)


class SendResult(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    TOO_LARGE = "too_large"
    REJECTED = "rejected"


class HttpSender:
    """POSTs batches to ``/api/v1/ingest`` over one kept-alive connection (standard library only).

    A connection the collector closed while idle is reopened and the batch sent again once; should the
    first attempt have been stored after all, the collector drops the resend as a duplicate of its seq.
    """

    available = True

    def __init__(self, url: str, token: str | None, guard: Guard):
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._path = parts.path or "/"
        self._headers = {"Content-Type": "application/json", "User-Agent": f"txwatch-hooks/{HOOKS_VERSION}"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"  # never logged
        self._guard = guard
        self._conn: http.client.HTTPConnection | None = None
        self.retry_after_s: float | None = None  # the collector's Retry-After on the last RETRY, if it sent one

    def describe(self) -> str:
        return self.url

    def lookup(self) -> Any:
        """``identity.Lookup``: the daemon's ``GET /api/v1/runs/{project}/{run}``, one request per name."""
        return self._stored_run

    def _stored_run(self, project: str, name: str) -> dict[str, Any] | None:
        from txwatch_hooks.identity import LOOKUP_TIMEOUT_S, Unknown

        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=LOOKUP_TIMEOUT_S)
        base = self._path[: -len("/ingest")] if self._path.endswith("/ingest") else "/api/v1"
        path = f"{base}/runs/{urllib.parse.quote(project, safe='')}/{urllib.parse.quote(name, safe='')}"
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise Unknown(f"the collector at {self.url} is not reachable: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if response.status == 404:
            return None
        if response.status != 200:
            raise Unknown(f"HTTP {response.status} from {self.url}: {_detail(body, response.reason)}")
        try:
            run = json.loads(body)
            return {"status": run.get("status"), "job": (run.get("info") or {}).get("job")}
        except (ValueError, AttributeError):
            raise Unknown(f"{self.url} answered something other than a txwatch run") from None

    def _connection(self, timeout_s: float) -> tuple[http.client.HTTPConnection, bool]:
        if self._conn is not None:
            self._conn.timeout = timeout_s
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout_s)
            return self._conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._conn = cls(self._host, self._port, timeout=timeout_s)
        return self._conn, False

    def send(self, data: bytes, timeout_s: float) -> SendResult:
        timeout_s = max(timeout_s, 0.05)
        self.retry_after_s = None
        for _attempt in range(2):
            conn, reused = self._connection(timeout_s)
            try:
                conn.request("POST", self._path, body=data, headers=self._headers)
                response = conn.getresponse()
                body = response.read()
                if response.will_close:
                    self.close()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused:
                    continue  # the kept-alive connection had gone stale: once more on a fresh one
                return self._away(exc)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # refused, timed out, DNS...: the collector is away; the batch waits in the spool
                self.close()
                return self._away(exc)
            if 200 <= response.status < 300:
                return SendResult.OK
            self.retry_after_s = _seconds(response.getheader("Retry-After"))
            return self._refused(response.status, _detail(body, response.reason))
        return SendResult.RETRY

    def _away(self, exc: BaseException) -> SendResult:
        self._guard.warn_once(
            "http-away", "txwatch: the collector at %s is not reachable (%s: %s); batches are kept in the "
            "local spool and sent when it is back", self.url, type(exc).__name__, exc,
        )
        return SendResult.RETRY

    def _refused(self, code: int, detail: str) -> SendResult:
        if code in (401, 403):
            self._guard.warn_once(
                f"http-{code}", "txwatch: the collector refused the token (HTTP %s: %s); set TXWATCH_TOKEN "
                "(or token=) to the collector's token. Batches are kept in the local spool meanwhile.",
                code, detail,
            )
            return SendResult.RETRY
        if code == 413:
            self._guard.warn_once(
                "http-413", "txwatch: the collector found a batch too large (HTTP 413: %s); sending it in smaller "
                "batches", detail,
            )
            return SendResult.TOO_LARGE
        if code in (408, 425, 429) or code >= 500:
            self._guard.warn_once(
                f"http-{code}", "txwatch: the collector is busy or failing (HTTP %s: %s); retrying later",
                code, detail,
            )
            return SendResult.RETRY
        self._guard.warn_once(
            f"http-{code}", "txwatch: the collector rejected a batch (HTTP %s: %s); it was dropped and "
            "counted as 'rejected'", code, detail,
        )
        return SendResult.REJECTED

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


class EmbeddedSender:
    """Hands batches to ``txwatch.collector.embedded.open_embedded()``, opened on first use (worker thread).

    Opening runs migrations and starts the rule engine, so it happens off the training thread; if it fails
    (bad local database, say) the failure is logged once and batches wait in the spool.
    """

    available = True

    def __init__(self, guard: Guard):
        self._guard = guard
        self._collector: Any = None
        self._open_failed = False

    def describe(self) -> str:
        return "the embedded collector (local database)"

    def lookup(self) -> Any:
        """``identity.Lookup``: the local database, read directly (the collector opens later, on the worker)."""
        return _local_stored_run

    def _open(self) -> Any:
        if self._collector is None and not self._open_failed:
            try:
                from txwatch.collector.embedded import open_embedded

                self._collector = open_embedded()
            except Exception as exc:
                self._open_failed = True
                self._guard.warn_once(
                    "embedded-open", "txwatch: could not start the embedded collector (%s: %s); batches are "
                    "kept in the local spool. Set TXWATCH_ENDPOINT to send them to a collector daemon.",
                    type(exc).__name__, exc,
                )
        return self._collector

    def send(self, data: bytes, timeout_s: float) -> SendResult:
        collector = self._open()
        if collector is None:
            return SendResult.RETRY
        if collector.send(json.loads(data), timeout_s):
            return SendResult.OK
        status = getattr(collector, "last_status", None)
        if status is not None and 400 <= status < 500:
            self._guard.warn_once(
                "embedded-rejected", "txwatch: the embedded collector rejected a batch (%s); dropped",
                getattr(collector, "last_error", ""),
            )
            return SendResult.REJECTED
        return SendResult.RETRY

    def close(self) -> None:
        if self._collector is not None:
            self._collector.close()


class ObjectSender:
    """Adapts a user-supplied ``send(batch: dict, timeout_s) -> bool`` object (e.g. a test double)."""

    available = True

    def __init__(self, target: Any):
        self._target = target

    def describe(self) -> str:
        return type(self._target).__name__

    def lookup(self) -> Any:
        """The target's ``stored_run(project, name)`` if it has one (``MemorySender``, an embedded handle)."""
        found = getattr(self._target, "stored_run", None)
        return found if callable(found) else None

    def send(self, data: bytes, timeout_s: float) -> SendResult:
        return SendResult.OK if self._target.send(json.loads(data), timeout_s) else SendResult.RETRY

    def close(self) -> None:
        close = getattr(self._target, "close", None)
        if callable(close):
            close()


class NullSender:
    """No collector configured and none embeddable: every batch stays in the spool."""

    available = False

    def describe(self) -> str:
        return "nowhere (no endpoint, no embedded collector)"

    def lookup(self) -> Any:
        return None

    def send(self, data: bytes, timeout_s: float) -> SendResult:
        return SendResult.RETRY

    def close(self) -> None:
        pass


def _local_stored_run(project: str, name: str) -> dict[str, Any] | None:
    from txwatch.collector.embedded import stored_run  # imported here: on the lookup's thread, not the caller's

    return stored_run(project, name)


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the collector sends seconds, not dates), bounded to an hour; None if absent."""
    try:
        return min(max(float(value), 0.0), 3600.0) if value else None
    except ValueError:
        return None


def _detail(body: bytes, reason: str) -> str:
    """The collector's explanation: the ``detail`` of its JSON error, else the start of the body."""
    try:
        text = body[:2000].decode("utf-8", "replace")
        payload = json.loads(text)
        for key in ("error", "detail"):  # the collector's errors say "error"; FastAPI's own say "detail"
            if isinstance(payload, dict) and key in payload:
                return str(payload[key])[:500]
        return text[:500]
    except Exception:
        return reason
