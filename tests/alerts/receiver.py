"""A recording JSON receiver on 127.0.0.1:0: stands in for a team's webhook endpoint and for Alertmanager's
``/api/v2/alerts`` (it keeps alerts by label set, like Alertmanager does). Scriptable statuses."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class Receiver:
    def __init__(self):
        self.received: list[Received] = []
        self.alerts: dict[tuple, dict[str, Any]] = {}  # Alertmanager view: label set -> latest alert
        self._statuses: deque[int] = deque()
        self._lock = threading.Lock()

    def __enter__(self) -> Receiver:
        handler = type("Handler", (_Handler,), {"receiver": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, *statuses: int) -> None:
        with self._lock:
            self._statuses.extend(statuses)


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        r = self.receiver
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        with r._lock:
            r.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status = r._statuses.popleft() if r._statuses else 200
            if status == 200 and self.path == "/api/v2/alerts":
                for alert in body:
                    r.alerts[tuple(sorted(alert["labels"].items()))] = alert
        data = b"{}" if status == 200 else b'{"error": "scripted failure"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
