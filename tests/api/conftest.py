"""A live collector for the API tests: the real daemon (services, app, jobs) on 127.0.0.1 port 0, in a thread."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from txwatch.daemon import Daemon
from txwatch.settings import Settings

START_TIMEOUT_S = 30.0


@dataclass
class Live:
    url: str
    daemon: Daemon
    thread: threading.Thread

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(timeout=30)


def start_live(**settings) -> Live:
    daemon = Daemon(Settings(port=0, **settings))
    daemon.build()
    thread = threading.Thread(target=daemon.run, name="txwatch.test-daemon", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not daemon.server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test daemon did not start")
        time.sleep(0.02)
    return Live(f"http://127.0.0.1:{daemon.port}", daemon, thread)


@pytest.fixture
def live(db_url):
    server = start_live(db_url=db_url)
    yield server
    server.stop()


@pytest.fixture
def client(live):
    with live.client() as c:
        yield c
