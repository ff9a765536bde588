"""A live collector for the API tests: the real daemon (tests.live) on 127.0.0.1 port 0, in a thread."""

from __future__ import annotations

import pytest

from tests.live import start_live


@pytest.fixture
def live(db_url):
    server = start_live(db_url=db_url)
    yield server
    server.stop()


@pytest.fixture
def client(live):
    with live.client() as c:
        yield c
