"""Shared fixtures: real databases (SQLite and PostgreSQL), each test with its own, created and dropped here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

# The project's machines run PostgreSQL on 127.0.0.1:5432 with trust auth; CI starts it (.ci/run).
PG_ADMIN_URL = os.environ.get("TXWATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_base() -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0]


@pytest.fixture(scope="session")
def pg_admin():
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # in CI PostgreSQL must run: fail loudly, never skip
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}. Start it (see .ci/run).")
    yield engine
    engine.dispose()


def create_pg_database(pg_admin) -> str:
    name = f"txwatch_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return name


def drop_pg_database(pg_admin, name: str) -> None:
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """An empty database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'txwatch.db'}"
        return
    admin = request.getfixturevalue("pg_admin")
    name = create_pg_database(admin)
    try:
        yield f"{_pg_base()}/{name}"
    finally:
        drop_pg_database(admin, name)


@pytest.fixture
def pg_url(pg_admin) -> Iterator[str]:
    """An empty PostgreSQL database URL (for tests that need PostgreSQL specifically, e.g. two collectors)."""
    name = create_pg_database(pg_admin)
    try:
        yield f"{_pg_base()}/{name}"
    finally:
        drop_pg_database(pg_admin, name)


@pytest.fixture
def store_engine(db_url):
    """An engine on an upgraded (migrated) empty database, SQLite and PostgreSQL."""
    from txwatch.store.db import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep every test away from the real user's data directory and TXWATCH_* settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    for key in list(os.environ):
        if key.startswith("TXWATCH_") and key != "TXWATCH_TEST_PG_URL":
            monkeypatch.delenv(key, raising=False)
