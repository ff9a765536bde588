"""The write path's statement set: every statement that stores a batch, on SQLite and PostgreSQL.

Two executors run these statements (``store.ingest``: rows bound per statement, binary COPY for PostgreSQL's
larger groups; ``store.pipelined``: PostgreSQL's pipeline mode, two round trips a group). They differ in how the
statements travel, never in what they write: the rows of a new run (``NEW_RUN``), the lock order (series by id,
then runs by id) and every merge are written once, here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from txwatch.store import rollup
from txwatch.store.models import Batch as BatchRow
from txwatch.store.models import Project, Run, Series

# A run row as the first batch of a run creates it (then ``plan.run_changes`` applies the batch to it).
NEW_RUN: dict[str, Any] = {"config": {}, "info": {}, "status": "running", "steps": 0, "client_stats": {}}

POINT_COLS = "step, time, value, series_id"
POINT_TYPES = ("int8", "float8", "float8", "int4")
ROLLUP_COLS = ("series_id", "level") + rollup.COLUMNS
ROLLUP_TYPES = ("int4", "int4", "int8", "int4", "int4", "int8", "int8", "int8", "float8",
                "float8", "int8", "float8", "float8", "int8", "float8", "float8")
SERIES_COUNTER_COLS = ("id", "n", "last_step", "last_value", "last_time")
SERIES_COUNTER_TYPES = ("int4", "int8", "int8", "float8", "float8")

# Incremental merge of a new summary into a stored one. Every right-hand side sees the old row (SQL UPDATE
# semantics), so the CASE conditions can refer to rollups.vmin while vmin itself is being assigned.
_VMIN_WINS = "(rollups.vmin IS NULL OR excluded.vmin < rollups.vmin)"
_VMAX_WINS = "(rollups.vmax IS NULL OR excluded.vmax > rollups.vmax)"
_NAN_WINS = "(rollups.nan_step IS NULL OR excluded.nan_step < rollups.nan_step)"
_ROLLUP_ON_CONFLICT = (
    " ON CONFLICT (series_id, level, block) DO UPDATE SET "
    "n = rollups.n + excluded.n, nans = rollups.nans + excluded.nans, "
    "first_step = CASE WHEN excluded.first_step < rollups.first_step THEN excluded.first_step ELSE rollups.first_step END, "
    "last_step = CASE WHEN excluded.last_step > rollups.last_step THEN excluded.last_step ELSE rollups.last_step END, "
    f"nan_step = CASE WHEN {_NAN_WINS} AND excluded.nan_step IS NOT NULL THEN excluded.nan_step ELSE rollups.nan_step END, "
    f"nan_time = CASE WHEN {_NAN_WINS} AND excluded.nan_step IS NOT NULL THEN excluded.nan_time ELSE rollups.nan_time END, "
    f"vmin = CASE WHEN {_VMIN_WINS} AND excluded.vmin IS NOT NULL THEN excluded.vmin ELSE rollups.vmin END, "
    f"vmin_step = CASE WHEN {_VMIN_WINS} AND excluded.vmin IS NOT NULL THEN excluded.vmin_step ELSE rollups.vmin_step END, "
    f"vmin_time = CASE WHEN {_VMIN_WINS} AND excluded.vmin IS NOT NULL THEN excluded.vmin_time ELSE rollups.vmin_time END, "
    f"vmax = CASE WHEN {_VMAX_WINS} AND excluded.vmax IS NOT NULL THEN excluded.vmax ELSE rollups.vmax END, "
    f"vmax_step = CASE WHEN {_VMAX_WINS} AND excluded.vmax IS NOT NULL THEN excluded.vmax_step ELSE rollups.vmax_step END, "
    f"vmax_time = CASE WHEN {_VMAX_WINS} AND excluded.vmax IS NOT NULL THEN excluded.vmax_time ELSE rollups.vmax_time END, "
    "vsum = CASE WHEN excluded.vsum IS NULL THEN rollups.vsum WHEN rollups.vsum IS NULL THEN excluded.vsum "
    "ELSE rollups.vsum + excluded.vsum END"
)
_POINTS_ON_CONFLICT = " ON CONFLICT (series_id, step) DO UPDATE SET time = excluded.time, value = excluded.value"
_SERIES_COUNTERS_SET = (
    "UPDATE series SET points = series.points + u.n, last_step = u.last_step, last_value = u.last_value, "
    "last_time = u.last_time FROM "
)

# -- SQLite: rows bound per statement ---------------------------------------------------------------------------

SQLITE_ROWS_PER_INSERT = 200  # 800 bound parameters per statement, far below SQLite's 32766
POINTS_INSERT_SQLITE = f"INSERT INTO points ({POINT_COLS}) VALUES (?, ?, ?, ?)"
POINTS_INSERT_MANY_SQLITE = f"INSERT INTO points ({POINT_COLS}) VALUES " + ", ".join(
    ["(?, ?, ?, ?)"] * SQLITE_ROWS_PER_INSERT
)
POINTS_UPSERT_SQLITE = POINTS_INSERT_SQLITE + _POINTS_ON_CONFLICT
ROLLUP_MERGE_SQLITE = (
    f"INSERT INTO rollups ({', '.join(ROLLUP_COLS)}) VALUES ({', '.join('?' for _ in ROLLUP_COLS)})"
    + _ROLLUP_ON_CONFLICT
)
SERIES_UPDATE_SQLITE = text(
    "UPDATE series SET points = points + :n, last_step = :last_step, last_value = :last_value, "
    "last_time = :last_time WHERE id = :id"
)

# -- PostgreSQL: one statement over column arrays -------------------------------------------------------------
# (executemany would be one round trip per row). The arrays are bound in binary (%b): psycopg's text array dumper
# quotes each element through a regex in Python, which made the rollup merge a third of the client's CPU for
# small batches (16 arrays of 60 elements: 2.0 -> 0.48 ms).


def _unnest(types: tuple[str, ...]) -> str:
    return f"unnest({', '.join('%b::' + t + '[]' for t in types)})"


CLAIM_PG = (
    "INSERT INTO batches (run_id, rank, seq, received, points) "
    "SELECT r, k, s, %b::timestamptz, p FROM unnest(%b::int4[], %b::int4[], %b::int8[], %b::int4[]) AS u(r, k, s, p) "
    "ON CONFLICT (run_id, rank, seq) DO NOTHING RETURNING run_id, rank, seq"
)
PROJECTS_INSERT_PG = (
    "INSERT INTO projects (name, created) SELECT n, %b::timestamptz FROM unnest(%b::text[]) AS u(n) "
    "ON CONFLICT (name) DO NOTHING"
)


def _pg_literal(value: Any) -> str:
    if isinstance(value, dict):
        return "'" + json.dumps(value).replace("'", "''") + "'::json"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


RUNS_INSERT_PG = (  # NEW_RUN's rows, in (project, run) order
    f"INSERT INTO runs (project_id, name, started, last_seen, {', '.join(NEW_RUN)}) "
    f"SELECT p.id, u.name, u.started, %b::timestamptz, {', '.join(_pg_literal(v) for v in NEW_RUN.values())} "
    "FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) AS u(project, name, started) "
    "JOIN projects p ON p.name = u.project ORDER BY u.project, u.name "
    "ON CONFLICT (project_id, name) DO NOTHING"
)
RUN_IDS_PG = (
    "SELECT r.id, p.name, r.name FROM runs r JOIN projects p ON p.id = r.project_id "
    "JOIN unnest(%b::text[], %b::text[]) AS w(project, name) ON p.name = w.project AND r.name = w.name"
)
# the columns ``plan.run_changes`` reads; FOR NO KEY UPDATE: does not block foreign-key checks
RUN_LOCK_COLS = ("status", "steps", "config", "info", "ended", "client_stats", "started")
RUNS_LOCK_PG = (
    f"SELECT id, {', '.join(RUN_LOCK_COLS)} FROM runs WHERE id = ANY(%b::int4[]) ORDER BY id FOR NO KEY UPDATE"
)
RUN_JSON_COLS = frozenset({"config", "info", "end_memory", "client_stats"})
SERIES_INSERT_PG = (
    "INSERT INTO series (run_id, name, points) SELECT r, n, 0 FROM unnest(%b::int4[], %b::text[]) AS u(r, n) "
    "ON CONFLICT (run_id, name) DO NOTHING"
)
SERIES_IDS_PG = (
    "SELECT s.id, s.run_id, s.name FROM series s "
    "JOIN unnest(%b::int4[], %b::text[]) AS w(run_id, name) ON s.run_id = w.run_id AND s.name = w.name"
)
SERIES_LOCK_PG = (  # FOR NO KEY UPDATE: does not block foreign-key checks
    "SELECT id, last_step, last_value, last_time, downsampled_before FROM series WHERE id = ANY(%b::int4[]) "
    "ORDER BY id FOR NO KEY UPDATE"
)
SERIES_LOCK_BY_NAME_PG = (  # a group with new series: locked by run and name, which also gives their ids
    "SELECT s.id, s.run_id, s.name, s.last_step, s.last_value, s.last_time, s.downsampled_before FROM series s "
    "JOIN unnest(%b::int4[], %b::text[]) AS w(run_id, name) ON s.run_id = w.run_id AND s.name = w.name "
    "ORDER BY s.id FOR NO KEY UPDATE OF s"
)
POINTS_INSERT_PG = f"INSERT INTO points ({POINT_COLS}) SELECT * FROM {_unnest(POINT_TYPES)}"
POINTS_UPSERT_PG = POINTS_INSERT_PG + _POINTS_ON_CONFLICT
ROLLUP_MERGE_PG = (
    f"INSERT INTO rollups ({', '.join(ROLLUP_COLS)}) SELECT * FROM {_unnest(ROLLUP_TYPES)}" + _ROLLUP_ON_CONFLICT
)
SERIES_UPDATE_PG = (
    _SERIES_COUNTERS_SET + f"{_unnest(SERIES_COUNTER_TYPES)} AS u({', '.join(SERIES_COUNTER_COLS)}) "
    "WHERE series.id = u.id"
)

# PostgreSQL's larger groups: points, rollups and series counters travel by binary COPY (into per-connection
# staging tables for the merges, then one statement merges them). Two round trips instead of one, but COPY
# encodes rows for a fraction of the client CPU of binary arrays; merging rollup rows measured (CPU / wall, ms):
# 64 rows 0.84 / 1.85 bound as arrays, 0.54 / 1.51 by COPY; 256 rows 2.30 / 5.21 against 0.78 / 2.91.
POINTS_COPY_PG = f"COPY points ({POINT_COLS}) FROM STDIN (FORMAT BINARY)"
STAGING_PG = (
    "CREATE TEMP TABLE IF NOT EXISTS rollups_in (LIKE rollups) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS series_in (id int4, n int8, last_step int8, last_value float8, "
    "last_time float8) ON COMMIT DELETE ROWS",
)
ROLLUP_COPY_PG = f"COPY rollups_in ({', '.join(ROLLUP_COLS)}) FROM STDIN (FORMAT BINARY)"
ROLLUP_MERGE_STAGED_PG = (
    f"INSERT INTO rollups ({', '.join(ROLLUP_COLS)}) SELECT {', '.join(ROLLUP_COLS)} FROM rollups_in"
    + _ROLLUP_ON_CONFLICT
)
SERIES_COPY_PG = f"COPY series_in ({', '.join(SERIES_COUNTER_COLS)}) FROM STDIN (FORMAT BINARY)"
SERIES_UPDATE_STAGED_PG = _SERIES_COUNTERS_SET + "series_in u WHERE series.id = u.id"

# -- both: rewrites of stored steps (rare: they read between writes) -------------------------------------------

COUNT_STEPS = text("SELECT count(*) FROM points WHERE series_id = :sid AND step IN :steps").bindparams(
    bindparam("steps", expanding=True)
)
ROLLUPS_DELETE = text(
    "DELETE FROM rollups WHERE series_id = :sid AND block >= :start / level AND block < :end / level"
)
POINTS_RANGE = text(
    "SELECT step, time, value FROM points WHERE series_id = :sid AND step >= :start AND step < :end ORDER BY step"
)


class Statements:
    """The SQLAlchemy-built statements of one dialect, built once: constructing SQLAlchemy statements per batch
    cost more than executing them for small batches (100 runs x 1 batch/s)."""

    def __init__(self, dialect: str):
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {dialect!r}: txwatch stores runs in SQLite or PostgreSQL")
        self.dialect = dialect
        self.insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        self.claim = (
            self.insert(_table(BatchRow))
            .on_conflict_do_nothing(index_elements=["run_id", "rank", "seq"])
            .returning(BatchRow.run_id, BatchRow.rank, BatchRow.seq)  # rows back: inserted; missing: already there
        )
        self.projects_insert = self.insert(_table(Project)).on_conflict_do_nothing(index_elements=["name"])
        self.runs_insert = self.insert(_table(Run)).on_conflict_do_nothing(index_elements=["project_id", "name"])
        self.series_insert = self.insert(_table(Series)).on_conflict_do_nothing(index_elements=["run_id", "name"])
        self.series_lock = (
            select(Series.id, Series.last_step, Series.last_value, Series.last_time, Series.downsampled_before)
            .where(Series.id.in_(bindparam("ids", expanding=True)))
            .order_by(Series.id)
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE: does not block foreign-key checks
        )
        self.runs_lock = (
            select(Run.id, *(getattr(Run, c) for c in RUN_LOCK_COLS))
            .where(Run.id.in_(bindparam("rids", expanding=True)))
            .order_by(Run.id)
            .with_for_update(key_share=True)
        )
        self.run_update = update(Run).where(Run.id == bindparam("rid"))


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


def new_run(project_id: int, name: str, started: datetime, now: datetime) -> dict[str, Any]:
    """The row of a run that a batch starts (``RUNS_INSERT_PG`` writes the same row)."""
    return {"project_id": project_id, "name": name, "started": started, "last_seen": now,
            **{k: (dict(v) if isinstance(v, dict) else v) for k, v in NEW_RUN.items()}}
