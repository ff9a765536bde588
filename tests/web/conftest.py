"""Browser fixtures: Debian's headless Chromium driven by Playwright (never `playwright install`), and a live
collector fed by small instrumented trainings, once per database (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _pg_base, create_pg_database, drop_pg_database
from tests.live import Live, start_live
from tests.web.training import Trained, train

CHROMIUM = os.environ.get("TXWATCH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
PROJECT = "web-test"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: apt-get install -y chromium (scripts/setup-env does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (its own localStorage) and page; JavaScript errors fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(15_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(pg, name: str) -> Path:
    """Save a full-page screenshot under artifacts/screenshots/ (kept by CI as an artifact)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


@dataclass
class World:
    """A collector with two finished trainings in it."""

    db: str
    collector: Live
    healthy: Trained
    faulty: Trained

    @property
    def url(self) -> str:
        return self.collector.url


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request) -> Iterator[tuple[str, str]]:
    """(kind, URL) of an empty database shared by one test module, SQLite and PostgreSQL."""
    if request.param == "sqlite":
        folder = tempfile.mkdtemp(prefix="txwatch-web-")
        try:
            yield "sqlite", f"sqlite:///{folder}/txwatch.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    admin = request.getfixturevalue("pg_admin")
    name = create_pg_database(admin)
    try:
        yield "postgresql", f"{_pg_base()}/{name}"
    finally:
        drop_pg_database(admin, name)


@pytest.fixture(scope="module")
def isolated_env(tmp_path_factory) -> Iterator[None]:
    """What tests/conftest.py's autouse fixture does per test, for module-scoped fixtures that run before it."""
    home = tmp_path_factory.mktemp("web-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
        for key in list(os.environ):
            if key.startswith("TXWATCH_") and key != "TXWATCH_TEST_PG_URL":
                mp.delenv(key, raising=False)
        yield


@pytest.fixture(scope="module")
def world(database, isolated_env) -> Iterator[World]:
    kind, url = database
    collector = start_live(url)
    try:
        suffix = uuid.uuid4().hex[:6]
        healthy = train(collector.url, PROJECT, f"healthy-{suffix}", faulty=False, steps=60)
        faulty = train(collector.url, PROJECT, f"faulty-{suffix}", faulty=True, steps=90)
        yield World(kind, collector, healthy, faulty)
    finally:
        collector.stop()
