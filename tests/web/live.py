"""A live collector for the browser tests: the real app (``create_app``) behind uvicorn on 127.0.0.1, port 0."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn

from txwatch.services import Services, build_services
from txwatch.settings import Settings

START_TIMEOUT_S = 30.0


@dataclass
class LiveCollector:
    url: str
    services: Services
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.services.close()


def start_collector(db_url: str, token: str | None = None, with_rules: bool = True) -> LiveCollector:
    """Serve the real app (the daemon's own wiring) on a free port in a background thread; returns once it
    accepts connections. ``with_rules=False`` loads no rules (the page benchmark only reads stored runs)."""
    from txwatch.api.app import create_app

    settings = Settings(db_url=db_url, token=token, port=0, builtin_rules=with_rules)
    services = build_services(settings)
    app = create_app(services)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="txwatch.test-collector", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test collector did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveCollector(f"http://127.0.0.1:{port}", services, server, thread)
