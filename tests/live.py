"""The one live collector for tests (and the page benchmark): the real daemon (services, app, background jobs), as
`txwatch serve` runs it, on 127.0.0.1 in a thread of the test process, so a test can also reach its services."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from txwatch.collector.daemon import Daemon
from txwatch.settings import Settings

START_TIMEOUT_S = 30.0


@dataclass
class Live:
    url: str
    daemon: Daemon
    thread: threading.Thread

    @property
    def services(self):
        """The running collector's services (database sessions, rules, alerting), for a test to look inside."""
        return self.daemon.services

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(timeout=30)


def start_live(db_url: str, *, port: int = 0, **settings) -> Live:
    """Start the real daemon on ``db_url`` with these settings (``Settings`` fields: ``token``,
    ``builtin_rules=False`` for no rules, ...) and return once it accepts connections.

    ``port=0`` takes a free port; a fixed port (``txwatch_hooks.testing.free_port()``) lets a restarted
    collector be found where its clients left it.
    """
    daemon = Daemon(Settings(db_url=db_url, port=port, **settings))
    daemon.build()
    thread = threading.Thread(target=daemon.run, name="txwatch.test-daemon", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not daemon.server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test daemon did not start")
        time.sleep(0.02)
    return Live(f"http://127.0.0.1:{daemon.port}", daemon, thread)
