"""What a group of batches writes, worked out without I/O: the point, rollup and counter rows from the locked
series rows, and each run row's changes from its locked row. Both executors (``store.ingest``,
``store.pipelined``) write exactly these rows."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from txwatch.store import rollup
from txwatch.store.codec import json_safe
from txwatch.store.models import as_utc
from txwatch.wire.batch import Batch

IN_CHUNK = 5000  # ids per IN (...) list: below SQLite's and PostgreSQL's bound-parameter limits

RunKey = tuple[str, str]  # (project, run)
ClaimKey = tuple[int, int, int]  # (run id, rank, seq)
Item = tuple[int, Batch, dict[str, int]]  # run id, batch, the series ids already known for that run
Row = tuple[Any, ...]
_T = TypeVar("_T")


class LockedRun(Protocol):
    """A locked run row, as ``run_changes`` reads it."""

    @property
    def status(self) -> str: ...
    @property
    def steps(self) -> int: ...
    @property
    def config(self) -> dict[str, Any] | None: ...
    @property
    def info(self) -> dict[str, Any] | None: ...
    @property
    def ended(self) -> datetime | None: ...
    @property
    def client_stats(self) -> dict[str, Any] | None: ...
    @property
    def started(self) -> datetime: ...


def utc_of(dt: datetime) -> datetime:
    """A stored datetime as aware UTC (``models.as_utc``)."""
    return as_utc(dt) or dt


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Written:
    """What one batch wrote: points stored and the series ids it used (name -> id)."""

    points: int
    series_ids: dict[str, int] = field(default_factory=dict)
    max_step: int | None = None


@dataclass
class Plan:
    """What a group of claimed batches writes, worked out from the locked series rows (no I/O)."""

    fresh_rows: list[Row] = field(default_factory=list)  # points after each series' last stored step
    rewrites: list[tuple[int, list[Row]]] = field(default_factory=list)  # (series id, rows) over stored steps
    rollup_rows: list[Row] = field(default_factory=list)  # summaries of the fresh rows, to merge
    # series id -> its counter update; "n" (points added) is None for a rewritten series until counted
    counters: dict[int, dict[str, Any]] = field(default_factory=dict)
    written: dict[int, Written] = field(default_factory=dict)  # item index -> what it wrote


# (claimed keys, what each claimed item wrote, in the order of the claimed items)
Stored = tuple[set[ClaimKey], list[Written]]


def plan_writes(items: Sequence[Item], all_ids: Mapping[int, dict[str, int]], old: Mapping[int, Row]) -> Plan:
    """The rows that ``items`` (run id, batch, known ids) write, given each series' ids (``all_ids``: item
    index -> name -> id) and its locked row (``old``: id -> last_step, last_value, last_time, thinned below)."""
    plan = Plan()
    for i in sorted(all_ids, key=lambda i: items[i][0]):
        batch = items[i][1]
        ids = all_ids[i]
        total = 0
        max_step: int | None = None
        for name, sid in ids.items():
            rows = point_rows(batch.series[name], sid)
            last_step, last_value, last_time, _ = old[sid]
            new: int | None
            if last_step is None or rows[0][0] > last_step:
                plan.fresh_rows.extend(rows)
                new = len(rows)
                plan.rollup_rows.extend(rollup_rows(sid, rows))
            else:
                new = None
                plan.rewrites.append((sid, rows))
            total += len(rows)
            top = rows[-1]
            if last_step is None or top[0] >= last_step:
                last_step, last_value, last_time = top[0], top[2], top[1]
            if max_step is None or top[0] > max_step:
                max_step = top[0]
            plan.counters[sid] = {
                "id": sid, "n": new, "last_step": last_step, "last_value": last_value, "last_time": last_time,
            }
        plan.written[i] = Written(points=total, series_ids=ids, max_step=max_step)
    return plan


def run_updates(
    rows: Mapping[int, LockedRun], items: Sequence[tuple[int, Batch, int | None]], now: datetime
) -> dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]]:
    """Each batch's changes to its locked run row (``rows``: run id -> row; ``items``: run id, batch, highest
    step written), in run id order, grouped by the columns they change: runs whose changes touch the same
    columns are updated by one executemany (one round trip on PostgreSQL, whose driver pipelines it)."""
    by_columns: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
    for run_id, batch, max_step in sorted(items, key=lambda i: i[0]):
        changes = run_changes(rows[run_id], batch, now, max_step)
        by_columns.setdefault(tuple(sorted(changes)), []).append((run_id, changes))
    return by_columns


def run_changes(run: LockedRun, batch: Batch, now: datetime, max_step: int | None) -> dict[str, Any]:
    """One batch's changes to its run row: last seen, steps, status and how it ended, info, config, stats."""
    values: dict[str, Any] = {"last_seen": now}
    steps = run.steps
    if max_step is not None and max_step > steps:
        steps = max_step
    status = run.status
    if status in ("stalled", "vanished"):
        status = "running"  # it spoke again
    for event in batch.events:
        if event.step is not None and event.step > steps:
            steps = event.step
        if event.kind == "start":
            if status != "running" and (run.ended is None or utc(event.time) > utc_of(run.ended)):
                status = "running"  # a resumed run (same name, started again after it ended)
                values.update(ended=None, end_reason=None, error_type=None, error_message=None, end_memory=None)
        elif event.kind == "end":
            reason = event.status or "finished"
            status = "finished" if reason == "finished" else "crashed"
            values.update(
                ended=utc(event.time),
                end_reason=reason,
                error_type=event.error.type if event.error else None,
                error_message=event.error.message if event.error else None,
                end_memory=json_safe(event.memory),
            )
    if status != run.status:
        values["status"] = status
    if steps != run.steps:
        values["steps"] = steps
    if batch.run_info is not None:
        info = json_safe(batch.run_info.model_dump(exclude_none=True))
        config = info.pop("config", None)
        if config:
            values["config"] = {**(run.config or {}), **config}
        merged = {**(run.info or {}), **info}
        if "tags" in info:  # a job adds its tags; those added by `txwatch tag` stay
            merged["tags"] = sorted(set((run.info or {}).get("tags") or []) | set(info["tags"]))
        if merged != run.info:
            values["info"] = merged
        if batch.run_info.host:
            values["host"] = batch.run_info.host
        # the earliest start any process of the run reports (a resumed run keeps its first start)
        if batch.run_info.started is not None and utc(batch.run_info.started) < utc_of(run.started):
            values["started"] = utc(batch.run_info.started)
    if batch.client is not None:
        stats = dict(run.client_stats or {})
        stats[str(batch.rank)] = json_safe(batch.client.model_dump())
        values["client_stats"] = stats
    return values


def new_runs(batches: Sequence[Batch], now: datetime) -> dict[RunKey, datetime]:
    """The runs of ``batches`` as (project, run) -> when it started, in (project, run) order: what a new run
    row is created from (its first batch in the group tells the start)."""
    first: dict[RunKey, Batch] = {}
    for b in batches:
        first.setdefault((b.project, b.run), b)
    return {key: started(first[key], now) for key in sorted(first)}


def started(batch: Batch, now: datetime) -> datetime:
    if batch.run_info is not None and batch.run_info.started is not None:
        return utc(batch.run_info.started)
    for event in batch.events:
        if event.kind == "start":
            return utc(event.time)
    return now


def point_rows(points: Sequence[Sequence[Any]], sid: int) -> list[Row]:
    """(step, time, stored value, series id) rows sorted by step, one per step (the last sent wins)."""
    rows = [(s, t, v if v == v else None, sid) for s, t, v in points]
    steps = [r[0] for r in rows]
    if not all(map(operator.lt, steps, steps[1:])):  # the hooks send steps in order; users may not
        rows = sorted({r[0]: r for r in rows}.values())
    return rows


def rollup_rows(sid: int, rows: Sequence[Sequence[Any]]) -> list[Row]:
    """The rollup rows (series id, level, summary...) summarizing ``rows`` at every level."""
    return [(sid, level, *s) for level, summaries in rollup.all_levels(rows).items() for s in summaries]


def chunks(seq: Sequence[_T], size: int = IN_CHUNK) -> Iterator[Sequence[_T]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
