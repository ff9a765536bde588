"""PostgreSQL: a small group of batches stored in two round trips, with psycopg's pipeline mode.

With 100 runs sending a batch a second, the ingest writer spends most of its time waiting for the server, not
working: BEGIN, the claim, the series and run locks, points, rollups, counters, runs and COMMIT were ten round
trips a group, each waiting for the reply (and, in a busy daemon, for the GIL again). In pipeline mode each
phase's statements go out together and are answered together:

1. claim the batches (``batches`` rows) and lock their series and runs, whose rows the writes are planned from;
2. points, rollups, series counters, run rows, COMMIT.

New series are created in the first round trip (and locked by run and name); new runs beforehand, with
``ensure_runs``, in one round trip for the whole group. The statements (``store.statements``), the lock order
(series by id, then runs by id) and the rows written (``store.plan``) are the row writer's
(``store.ingest.RowWriter``); only the transport differs. ``store`` declines (returns None, having written
nothing) when the row writer is the better one: a group too large for bound arrays (COPY is cheaper), or a batch
rewriting steps already stored (rare: it needs reads between writes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from txwatch.store import statements as sql
from txwatch.store.plan import Item, Row, RunKey, Stored, Written, new_runs, plan_writes, run_updates
from txwatch.wire.batch import Batch

# Larger groups go the row writer's way: binary COPY encodes points and rollups for a third of the client CPU of
# bound arrays, which outweighs two round trips once a group carries thousands of rows.
MAX_POINTS = 20_000
MAX_SERIES = 256  # (batch, series) pairs: about three rollup rows each


class _Run:
    """A locked run row with the attributes ``plan.run_changes`` reads."""

    __slots__ = ("id",) + sql.RUN_LOCK_COLS

    def __init__(self, row: Row):
        self.id = row[0]
        for name, value in zip(sql.RUN_LOCK_COLS, row[1:]):
            setattr(self, name, value)


@contextlib.contextmanager
def transaction(conn: Connection, what: str) -> Iterator[Any]:
    """A transaction in pipeline mode on ``conn``'s psycopg connection (which must not be in one): yields the
    psycopg connection, whose statements are sent without waiting; reading a result, or ``commit()``, waits for
    everything sent so far. The caller commits or rolls back inside. A psycopg error rolls back and comes out
    as SQLAlchemy's ``DBAPIError`` subclass (``IntegrityError``, ``OperationalError``...), as a statement run
    through SQLAlchemy would raise it, and a broken connection is invalidated (the pool replaces it)."""
    import psycopg  # here, not at the top: SQLite users (and embedded training processes) never load it

    dbapi: Any = conn.connection.dbapi_connection
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


def eligible(items: Sequence[Item]) -> bool:
    """Whether the group is small enough for ``store`` (larger ones are cheaper by COPY)."""
    points = pairs = 0
    for _, batch, _ in items:
        for pts in batch.series.values():
            if pts:
                pairs += 1
                points += len(pts)
    return points <= MAX_POINTS and pairs <= MAX_SERIES


class PipelineWriter:
    """The write path in pipeline mode (a ``store.ingest.WriteExecutor``)."""

    def ensure_runs(self, conn: Connection, batches: Sequence[Batch], now: datetime) -> dict[RunKey, int]:
        """``RowWriter.ensure_runs`` in one round trip: the ids of the batches' runs, creating the projects and
        runs that are new, committed. ``conn`` must not be in a transaction."""
        runs = new_runs(batches, now)
        projects, names = [p for p, _ in runs], [r for _, r in runs]
        with transaction(conn, "pipelined run lookup") as dbapi:
            cur, ids = dbapi.cursor(), dbapi.cursor()
            cur.execute(sql.PROJECTS_INSERT_PG, (now, sorted(set(projects))))
            cur.execute(sql.RUNS_INSERT_PG, (now, projects, names, list(runs.values())))
            ids.execute(sql.RUN_IDS_PG, (projects, names))
            dbapi.commit()  # the one round trip: everything above, and COMMIT
            return {(project, name): rid for rid, project, name in ids.fetchall()}

    def store(self, conn: Connection, items: Sequence[Item], now: datetime) -> Stored | None:
        """Claim and store ``items`` (run id, batch, the run's known series ids; one batch per run) in one
        transaction of two round trips, committed. Returns the claimed (run, rank, seq) keys and, in the order
        of the claimed items, what each wrote; or None, with nothing written, when the row writer must store it.

        ``conn`` must not be in a transaction. Raises SQLAlchemy's ``DBAPIError`` subclasses, as the row writer
        does, so the collector's retries apply unchanged.
        """
        if not eligible(items):
            return None
        claim = sorted(((run_id, b.rank, b.seq, b.point_count()) for run_id, b, _ in items), key=lambda c: c[:3])
        wanted = sorted((run_id, name) for run_id, batch, _ in items for name, pts in batch.series.items() if pts)
        known = {run_id: ids for run_id, _, ids in items}
        missing = [(run_id, name) for run_id, name in wanted if name not in known[run_id]]
        run_ids = sorted(run_id for run_id, _, _ in items)
        with transaction(conn, "pipelined ingest") as dbapi:
            claim_cur, series_cur, runs_cur = dbapi.cursor(), dbapi.cursor(), dbapi.cursor()
            claim_cur.execute(sql.CLAIM_PG, (now, *map(list, zip(*claim))))
            ids: dict[int, dict[str, int]] = {run_id: {} for run_id in run_ids}  # filled from the lock if missing
            if missing:  # created in name order, as the row writer does; on a cursor of its own: in pipeline
                # mode a cursor's fetchall() can meet the INSERT's result instead of the lock's that follows it
                dbapi.cursor().execute(sql.SERIES_INSERT_PG, ([r for r, _ in missing], [n for _, n in missing]))
                series_cur.execute(sql.SERIES_LOCK_BY_NAME_PG, ([r for r, _ in wanted], [n for _, n in wanted]))
            else:
                for r, n in wanted:
                    ids[r][n] = known[r][n]
                series_cur.execute(sql.SERIES_LOCK_PG,
                                   (sorted(sid for names in ids.values() for sid in names.values()),))
            runs_cur.execute(sql.RUNS_LOCK_PG, (run_ids,))
            claimed = {(r[0], r[1], r[2]) for r in claim_cur.fetchall()}  # the first round trip ends here
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
                dbapi.rollback()  # nothing was written but claims and series: the row writer counts and upserts
                return None
            cur = dbapi.cursor()
            if plan.fresh_rows:
                cur.execute(sql.POINTS_INSERT_PG, tuple(map(list, zip(*plan.fresh_rows))))
            if plan.rollup_rows:
                cur.execute(sql.ROLLUP_MERGE_PG, tuple(map(list, zip(*plan.rollup_rows))))
            if plan.counters:
                counters = [plan.counters[sid] for sid in sorted(plan.counters)]
                cur.execute(sql.SERIES_UPDATE_PG, tuple([c[k] for c in counters] for k in sql.SERIES_COUNTER_COLS))
            _update_runs(cur, runs, new, plan.written, now)
            dbapi.commit()  # the second round trip: everything above, and COMMIT
        return claimed, [plan.written[i] for i in range(len(new))]


def _update_runs(cur: Any, runs: dict[int, _Run], new: list[Item], written: dict[int, Written], now: datetime) -> None:
    """``RowWriter._update_runs`` on the pipeline: one executemany per set of changed columns."""
    from psycopg.types.json import Json

    items = [(run_id, batch, written[i].max_step) for i, (run_id, batch, _) in enumerate(new)]
    for columns, changes in run_updates(runs, items, now).items():  # type: ignore[arg-type]
        params = [
            (*(Json(v[c]) if c in sql.RUN_JSON_COLS and v[c] is not None else v[c] for c in columns), run_id)
            for run_id, v in changes
        ]
        cur.executemany(f"UPDATE runs SET {', '.join(f'{c} = %s' for c in columns)} WHERE id = %s", params)
