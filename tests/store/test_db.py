"""Pooled PostgreSQL connections: a connection the server dropped while it sat in the pool is replaced."""

from __future__ import annotations

from sqlalchemy import text

from txwatch.store import db


def test_a_connection_killed_while_idle_is_replaced_without_an_error(pg_url, pg_admin, monkeypatch):
    engine = db.make_engine(pg_url, pool_size=1)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # the server ends the pooled connection (a restart, an idle timeout, an administrator)
        with pg_admin.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        monkeypatch.setattr(db, "IDLE_PING_S", 0.0)  # it has been idle "long enough" to be checked
        with engine.connect() as conn:
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert second != first
    finally:
        engine.dispose()
