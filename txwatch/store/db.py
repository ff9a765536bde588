"""Database engines, the default local database, and applying migrations."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from platformdirs import user_data_dir
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from txwatch.errors import ConfigError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# SQLite waits this long for a writer lock before failing: long enough to ride out a checkpoint or a
# concurrent collector's transaction, short enough that a wedged database is reported.
SQLITE_BUSY_TIMEOUT_S = 30.0
# A pooled server connection unused for this long is checked before use (see _ping_when_idle).
IDLE_PING_S = 10.0
# PostgreSQL that does not answer must not hold a caller forever (120 s and more were seen): opening a connection
# gives up after CONNECT_TIMEOUT_S, a statement after STATEMENT_TIMEOUT_S (far above any statement txwatch runs;
# migrations lift it), and TCP keepalives plus tcp_user_timeout close a connection to a host that went silent.
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 120
DEAD_PEER_S = 30


class DatabaseError(ConfigError):
    """A database could not be opened or upgraded; the message says why and what to do."""


class DatabaseStuck(Exception):
    """The database did not answer within the time a caller may wait (``OneAtATime``)."""


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (a SQLAlchemy error or the driver's own) says the database's disk is full."""
    orig = getattr(exc, "orig", None) or exc
    if (getattr(orig, "sqlite_errorcode", 0) or 0) & 0xFF == 13:  # SQLITE_FULL
        return True
    if getattr(orig, "sqlstate", None) == "53100":  # PostgreSQL disk_full
        return True
    text = str(orig).lower()
    return "database or disk is full" in text or "no space left on device" in text


def disk_full_text(engine: Engine) -> str:
    """What to tell people when ``engine``'s disk is full: where, and what to do."""
    u = engine.url
    sqlite = u.get_backend_name() == "sqlite" and u.database
    where = f"on {Path(u.database).parent}" if sqlite else "on the database server"
    return f"the disk holding the database is full ({where}): free space there; until then batches are refused"


class OneAtATime:
    """Runs a database read in a daemon thread of its own and waits for it at most ``timeout_s``.

    For what must answer while the database does not (``/readyz``, the run figures of ``/metrics``): a read
    stuck on a silent server is left behind, and while it is stuck the next callers are refused at once
    (``DatabaseStuck``) rather than each leaving another thread behind it.
    """

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._since = 0.0

    def call(self, fn, timeout_s: float):
        with self._lock:
            if self._running is not None and self._running.is_alive():
                raise DatabaseStuck(f"the database has not answered for {time.monotonic() - self._since:.0f} s")
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    box["value"] = fn()
                except BaseException as exc:  # handed to the caller
                    box["error"] = exc

            thread = threading.Thread(target=run, name=f"txwatch.{self.name}", daemon=True)
            self._running, self._since = thread, time.monotonic()
            thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise DatabaseStuck(f"the database did not answer within {timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")


def default_db_path() -> Path:
    return Path(user_data_dir("txwatch", appauthor=False)) / "txwatch.db"


def default_db_url() -> str:
    return f"sqlite:///{default_db_path()}"


def normalize_url(url: str | None) -> str:
    """Turn None, a bare path or a SQLAlchemy URL into a SQLAlchemy URL (``postgresql://`` -> psycopg 3)."""
    if not url:
        return default_db_url()
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode against a process crash
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cur.close()


def make_engine(url: str | None = None, **kwargs) -> Engine:
    """An engine for ``url`` (default: the local SQLite database, created with its folder if missing)."""
    url = normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("pool_timeout", CONNECT_TIMEOUT_S)  # every pooled connection taken (and stuck): say so soon
    if u.get_backend_name() == "postgresql":
        kwargs.setdefault("connect_args", {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}",
            "keepalives": 1, "keepalives_idle": DEAD_PEER_S // 3, "keepalives_interval": DEAD_PEER_S // 6,
            "keepalives_count": 3, "tcp_user_timeout": DEAD_PEER_S * 1000,
        })
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine.pool)
    return engine


def _ping_when_idle(pool) -> None:
    """Check a pooled connection before use only when it sat idle for ``IDLE_PING_S``: a server restart or an
    idle timeout is caught (the pool opens a fresh connection), without ``pool_pre_ping``'s round trip on every
    checkout, which busy ingest paid once per batch."""

    @event.listens_for(pool, "connect")
    @event.listens_for(pool, "checkin")
    def _mark(dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping(dbapi_conn, record, proxy) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < IDLE_PING_S:
            return
        try:
            cur = dbapi_conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
            dbapi_conn.rollback()
        except Exception as exc:
            log.info("a pooled database connection was dead (%s); opening a new one", exc.__class__.__name__)
            raise DisconnectionError() from exc


class SessionFactory(Protocol):
    """What the collector and the rule engine need of the store: sessions, and the engine they are bound to
    (``kw["bind"]``, for the write path's own connections). ``session_factory`` makes one."""

    kw: dict[str, Any]

    def __call__(self) -> Session: ...


def bound_engine(sessions: SessionFactory) -> Engine:
    """The engine ``sessions`` is bound to."""
    engine: Engine = sessions.kw["bind"]
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# PostgreSQL advisory lock key held while migrating ("txwatch" in ASCII): replicas started together on an empty
# database take turns instead of racing to create the same tables.
MIGRATION_LOCK_KEY = 0x74787761746368


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialize migrations across processes sharing a PostgreSQL database (no-op elsewhere)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``. Safe to call on every start, and from several collectors starting
    together on one PostgreSQL database (they take turns)."""
    try:
        with _migration_lock(engine):
            command.upgrade(alembic_config(engine), revision)
    except Exception as exc:  # report what failed and where, without the password
        raise DatabaseError(
            f"could not upgrade the database at {redact(str(engine.url))}: {exc.__class__.__name__}: {exc}"
        ) from exc


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
