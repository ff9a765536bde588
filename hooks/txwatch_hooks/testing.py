"""Test doubles shipped with the hooks: a sender that keeps batches in memory, and a stand-in collector
(a real HTTP server on 127.0.0.1) that records what it is sent and can go down and come back.

    sink = MemorySender()
    with watch(model, optimizer, sender=sink, schedule_delay_s=0.05) as monitor: ...
    sink.series("loss")  # [(step, value), ...]
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Batches:
    """Accepted batches, deduplicated on (project, run, rank, seq) like the collector."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str, int, int]] = set()
        self.duplicates = 0

    def accept(self, batch: dict[str, Any]) -> bool:
        key = (batch.get("project", "default"), batch["run"], batch.get("rank", 0), batch["seq"])
        with self.lock:
            if key in self.seen:
                self.duplicates += 1
                return False
            self.seen.add(key)
            self.batches.append(batch)
            return True

    def series(self, name: str, rank: int | None = None) -> list[tuple[int, float]]:
        """(step, value) of one series across the accepted batches, in arrival order."""
        with self.lock:
            return [(p[0], p[2]) for b in self.batches if rank is None or b.get("rank", 0) == rank
                    for p in b.get("series", {}).get(name, [])]

    def stored_run(self, project: str, name: str) -> dict[str, Any] | None:
        """The run as the collector would describe it to ``watch(resume=...)``: None if no batch named it."""
        with self.lock:
            mine = [b for b in self.batches if b.get("project", "default") == project and b["run"] == name]
        if not mine:
            return None
        info: dict[str, Any] = {}
        status = "running"
        for b in mine:
            info.update(b.get("run_info") or {})
            for e in b.get("events", []):
                if e["kind"] == "end":
                    status = "finished" if e.get("status", "finished") == "finished" else "crashed"
                elif e["kind"] == "start":
                    status = "running"
        return {"status": status, "job": info.get("job")}

    def names(self) -> set[str]:
        with self.lock:
            return {n for b in self.batches for n in b.get("series", {})}

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [e for b in self.batches for e in b.get("events", []) if kind is None or e["kind"] == kind]

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())


class MemorySender(_Batches):
    """A ``sender=`` for ``watch()`` that keeps every batch in memory. Set ``failing = True`` to refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.calls = 0

    def send(self, batch: dict[str, Any], timeout_s: float) -> bool:
        self.calls += 1
        if self.failing:
            return False
        self.accept(batch)
        return True


class CollectorStandIn(_Batches):
    """An HTTP server taking ``POST /api/v1/ingest`` like the collector (200, or 401 without the token).

    ``mode``: "up" (store and answer), "hang" (read the request, never answer; the request is dropped
    unprocessed when the mode changes), "reject" (422, as for an invalid batch), "busy" (503).
    ``stop()``/``start()`` take it down and bring it back on the same port (connection refused meanwhile).
    """

    def __init__(self, token: str | None = None):
        super().__init__()
        self.token = token
        self.mode = "up"
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CollectorStandIn:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                owner.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if owner.mode == "hang":
                    while owner.mode == "hang" and not owner._release.wait(0.05):
                        pass
                    self.close_connection = True
                    return
                if owner.mode == "reject":
                    return self._reply(422, {"detail": "series.loss.0: step must be >= 0"})
                if owner.mode == "busy":
                    return self._reply(503, {"detail": "database unavailable"})
                if owner.token is not None and self.headers.get("Authorization") != f"Bearer {owner.token}":
                    return self._reply(401, {"detail": "missing or wrong bearer token"})
                if self.path != "/api/v1/ingest":
                    return self._reply(404, {"detail": f"no route {self.path}"})
                batch = json.loads(body)
                duplicate = not owner.accept(batch)
                self._reply(200, {"accepted": True, "duplicate": duplicate})

            def do_GET(self) -> None:  # GET /api/v1/runs/{project}/{run}, as watch(resume=...) reads it
                if owner.token is not None and self.headers.get("Authorization") != f"Bearer {owner.token}":
                    return self._reply(401, {"detail": "missing or wrong bearer token"})
                parts = self.path.split("/")
                if len(parts) != 6 or parts[:4] != ["", "api", "v1", "runs"]:
                    return self._reply(404, {"detail": f"no route {self.path}"})
                stored = owner.stored_run(parts[4], parts[5])
                if stored is None:
                    return self._reply(404, {"error": f"no run {parts[4]}/{parts[5]!r}"})
                self._reply(200, {"name": parts[5], "project": parts[4], "status": stored["status"],
                                  "info": {"job": stored["job"]}})

            def _reply(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._release.clear()
        if not self.port:
            self.port = free_port()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="collector-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down: stop listening (clients get 'connection refused'); the port is kept for ``start()``."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> CollectorStandIn:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port() -> int:
    """A free port below the kernel's ephemeral range.

    A server that goes down and comes back must not use an ephemeral port: while nothing listens there, a
    client connecting to it can be given that same port as its own source port and connect to itself.
    """
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")
