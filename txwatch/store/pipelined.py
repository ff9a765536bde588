"""PostgreSQL: a small group of batches stored in two round trips, with psycopg's pipeline mode.

With 100 runs sending a batch a second, the ingest writer spends most of its time waiting for the server, not
working: BEGIN, the claim, the series and run locks, points, rollups, counters, runs and COMMIT were ten round
trips a group, each waiting for the reply (and, in a busy daemon, for the GIL again). In pipeline mode each
phase's statements go out together and are answered together:

1. claim the batches (``batches`` rows) and lock their series and runs, whose rows the writes are planned from;
2. points, rollups, series counters, run rows, COMMIT.

New series are created in the first round trip (and locked by run and name); new runs beforehand, with
``ensure_runs``, in one round trip for the whole group. The statements, the lock order (series by id, then runs
by id) and the rows written are the classic path's (``BatchWriter.write_many``); only the transport differs.
``store`` declines (returns None, having written nothing) when the classic path is the better one: a group too
large for bound arrays (COPY is cheaper), or a batch rewriting steps already stored (rare: it needs reads
between writes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from txwatch.wire.batch import Batch
from txwatch.store.ingest import (
    _ROLLUP_MERGE_PG,
    _SERIES_LOCK_PG,
    _SERIES_UPDATE_PG,
    BatchWriter,
    Written,
    _started,
    plan_writes,
)

# Larger groups go the classic way: binary COPY encodes points and rollups for a third of the client CPU of
# bound arrays, which outweighs two round trips once a group carries thousands of rows.
MAX_POINTS = 20_000
MAX_SERIES = 256  # (batch, series) pairs: about three rollup rows each

_CLAIM = (
    "INSERT INTO batches (run_id, rank, seq, received, points) "
    "SELECT r, k, s, %b::timestamptz, p FROM unnest(%b::int4[], %b::int4[], %b::int8[], %b::int4[]) AS u(r, k, s, p) "
    "ON CONFLICT (run_id, rank, seq) DO NOTHING RETURNING run_id, rank, seq"
)
_RUNS_LOCK = (  # the columns BatchWriter.run_changes reads; FOR NO KEY UPDATE, as the classic path
    "SELECT id, status, steps, config, info, ended, client_stats, started FROM runs WHERE id = ANY(%b::int4[]) "
    "ORDER BY id FOR NO KEY UPDATE"
)
_PROJECTS_INSERT = (
    "INSERT INTO projects (name, created) SELECT n, %b::timestamptz FROM unnest(%b::text[]) AS u(n) "
    "ON CONFLICT (name) DO NOTHING"
)
_RUNS_INSERT = (  # the classic path's new run row (BatchWriter.ensure_runs), in (project, run) order
    "INSERT INTO runs (project_id, name, config, info, status, started, last_seen, steps, client_stats) "
    "SELECT p.id, u.name, '{}'::json, '{}'::json, 'running', u.started, %b::timestamptz, 0, '{}'::json "
    "FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) AS u(project, name, started) "
    "JOIN projects p ON p.name = u.project ORDER BY u.project, u.name "
    "ON CONFLICT (project_id, name) DO NOTHING"
)
_RUN_IDS = (
    "SELECT r.id, p.name, r.name FROM runs r JOIN projects p ON p.id = r.project_id "
    "JOIN unnest(%b::text[], %b::text[]) AS w(project, name) ON p.name = w.project AND r.name = w.name"
)
_SERIES_INSERT = (
    "INSERT INTO series (run_id, name, points) SELECT r, n, 0 FROM unnest(%b::int4[], %b::text[]) AS u(r, n) "
    "ON CONFLICT (run_id, name) DO NOTHING"
)
_SERIES_LOCK_BY_NAME = (  # a group with new series: locked by run and name, which also gives their ids
    "SELECT s.id, s.run_id, s.name, s.last_step, s.last_value, s.last_time, s.downsampled_before FROM series s "
    "JOIN unnest(%b::int4[], %b::text[]) AS w(run_id, name) ON s.run_id = w.run_id AND s.name = w.name "
    "ORDER BY s.id FOR NO KEY UPDATE OF s"
)
_POINTS = (
    "INSERT INTO points (step, time, value, series_id) "
    "SELECT * FROM unnest(%b::int8[], %b::float8[], %b::float8[], %b::int4[])"
)
_JSON_COLUMNS = frozenset({"config", "info", "end_memory", "client_stats"})
_RUN_COLUMNS = ("status", "steps", "config", "info", "ended", "client_stats", "started")


class _Run:
    """A locked run row with the attributes ``BatchWriter.run_changes`` reads."""

    __slots__ = ("id",) + _RUN_COLUMNS

    def __init__(self, row: tuple):
        self.id = row[0]
        for name, value in zip(_RUN_COLUMNS, row[1:]):
            setattr(self, name, value)


@contextlib.contextmanager
def transaction(conn: Connection, what: str) -> Iterator[Any]:
    """A transaction in pipeline mode on ``conn``'s psycopg connection (which must not be in one): yields the
    psycopg connection, whose statements are sent without waiting; reading a result, or ``commit()``, waits for
    everything sent so far. The caller commits or rolls back inside. A psycopg error rolls back and comes out
    as SQLAlchemy's ``DBAPIError`` subclass (``IntegrityError``, ``OperationalError``...), as a statement run
    through SQLAlchemy would raise it, and a broken connection is invalidated (the pool replaces it)."""
    import psycopg  # here, not at the top: SQLite users (and embedded training processes) never load it

    dbapi = conn.connection.dbapi_connection
    try:
        with dbapi.pipeline():
            yield dbapi
    except psycopg.Error as exc:
        with contextlib.suppress(psycopg.Error):
            dbapi.rollback()
        if dbapi.broken or dbapi.closed:
            conn.invalidate(exc)
        raise DBAPIError.instance(f"({what})", None, exc, psycopg.Error) from exc
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            dbapi.rollback()
        raise


def eligible(items: list[tuple[int, Batch, dict[str, int]]]) -> bool:
    """Whether the group is small enough for ``store`` (larger ones are cheaper by COPY)."""
    points = pairs = 0
    for _, batch, _ in items:
        for pts in batch.series.values():
            if pts:
                pairs += 1
                points += len(pts)
    return points <= MAX_POINTS and pairs <= MAX_SERIES


def ensure_runs(conn: Connection, batches: list[Batch], now: datetime) -> dict[tuple[str, str], int]:
    """``BatchWriter.ensure_runs`` in one round trip: the ids of the batches' runs, creating the projects and
    runs that are new, committed. ``conn`` must not be in a transaction."""
    first: dict[tuple[str, str], Batch] = {}
    for b in batches:
        first.setdefault((b.project, b.run), b)
    keys = sorted(first)
    with transaction(conn, "pipelined run lookup") as dbapi:
        cur, ids = dbapi.cursor(), dbapi.cursor()
        cur.execute(_PROJECTS_INSERT, (now, sorted({p for p, _ in keys})))
        cur.execute(_RUNS_INSERT, (now, [p for p, _ in keys], [r for _, r in keys],
                                   [_started(first[k], now) for k in keys]))
        ids.execute(_RUN_IDS, ([p for p, _ in keys], [r for _, r in keys]))
        dbapi.commit()  # the one round trip: everything above, and COMMIT
        return {(project, name): rid for rid, project, name in ids.fetchall()}


def store(
    writer: BatchWriter, conn: Connection, items: list[tuple[int, Batch, dict[str, int]]], now: datetime
) -> tuple[set[tuple[int, int, int]], list[Written]] | None:
    """Claim and store ``items`` (run id, batch, the run's known series ids; one batch per run) in one
    transaction of two round trips, committed. Returns the claimed (run, rank, seq) keys and, in the order of
    the claimed items, what each wrote; or None, with nothing written, when the classic path must store it.

    ``conn`` must not be in a transaction. Raises SQLAlchemy's ``DBAPIError`` subclasses, as the classic path
    does, so the collector's retries apply unchanged.
    """
    claim = sorted(((run_id, b.rank, b.seq, b.point_count()) for run_id, b, _ in items), key=lambda c: c[:3])
    wanted = sorted((run_id, name) for run_id, batch, _ in items for name, pts in batch.series.items() if pts)
    known = {run_id: ids for run_id, _, ids in items}
    missing = [(run_id, name) for run_id, name in wanted if name not in known[run_id]]
    run_ids = sorted(run_id for run_id, _, _ in items)
    with transaction(conn, "pipelined ingest") as dbapi:
        claim_cur, series_cur, runs_cur = dbapi.cursor(), dbapi.cursor(), dbapi.cursor()
        claim_cur.execute(_CLAIM, (now, *map(list, zip(*claim))))
        ids: dict[int, dict[str, int]] = {run_id: {} for run_id in run_ids}  # filled from the lock if missing
        if missing:  # created in name order, as the classic path does; on a cursor of its own: in pipeline
            # mode a cursor's fetchall() can meet the INSERT's result instead of the lock's that follows it
            dbapi.cursor().execute(_SERIES_INSERT, ([r for r, _ in missing], [n for _, n in missing]))
            series_cur.execute(_SERIES_LOCK_BY_NAME, ([r for r, _ in wanted], [n for _, n in wanted]))
        else:
            for r, n in wanted:
                ids[r][n] = known[r][n]
            series_cur.execute(_SERIES_LOCK_PG, (sorted(sid for names in ids.values() for sid in names.values()),))
        runs_cur.execute(_RUNS_LOCK, (run_ids,))
        claimed = {tuple(r) for r in claim_cur.fetchall()}  # the first round trip ends here
        old = {}
        for row in series_cur.fetchall():
            if missing:
                sid, run_id, name, *rest = row
                ids[run_id][name] = sid
            else:
                sid, *rest = row
            old[sid] = tuple(rest)
        runs = {r[0]: _Run(r) for r in runs_cur.fetchall()}
        new = [item for item in items if (item[0], item[1].rank, item[1].seq) in claimed]
        all_ids = {i: ids[run_id] for i, (run_id, _, _) in enumerate(new)}
        plan = plan_writes(new, all_ids, old)
        if plan.rewrites:
            dbapi.rollback()  # nothing was written but claims and series: the classic path counts and upserts
            return None
        cur = dbapi.cursor()
        if plan.fresh_rows:
            cur.execute(_POINTS, tuple(map(list, zip(*plan.fresh_rows))))
        if plan.rollup_rows:
            cur.execute(_ROLLUP_MERGE_PG, tuple(map(list, zip(*plan.rollup_rows))))
        if plan.counters:
            counters = [plan.counters[sid] for sid in sorted(plan.counters)]
            cur.execute(_SERIES_UPDATE_PG, tuple(
                [c[k] for c in counters] for k in ("id", "n", "last_step", "last_value", "last_time")
            ))
        _update_runs(cur, writer, runs, new, plan.written, now)
        dbapi.commit()  # the second round trip: everything above, and COMMIT
    return claimed, [plan.written[i] for i in range(len(new))]


def _update_runs(cur: Any, writer: BatchWriter, runs: dict[int, _Run], new: list, written: dict, now) -> None:
    """``BatchWriter._update_runs`` on the pipeline: one executemany per set of changed columns."""
    from psycopg.types.json import Json

    items = [(run_id, batch, written[i].max_step) for i, (run_id, batch, _) in enumerate(new)]
    for columns, changes in writer.run_updates(runs, items, now).items():
        params = [
            (*(Json(v[c]) if c in _JSON_COLUMNS and v[c] is not None else v[c] for c in columns), run_id)
            for run_id, v in changes
        ]
        cur.executemany(f"UPDATE runs SET {', '.join(f'{c} = %s' for c in columns)} WHERE id = %s", params)
