"""Series points for charts: raw when few, min/max per bucket when many, read from rollups when long.

A bucket keeps the points a chart must not lose: its lowest and highest value at the steps they happened,
and its first NaN (a NaN loss is a symptom). Long ranges read block summaries (``rollups``) instead of raw
points, so a 1M-point series costs a few thousand rows.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from txwatch.store import rollup
from txwatch.store.codec import NAN, decode
from txwatch.store.models import Series

DEFAULT_MAX_POINTS = 2000
MAX_MAX_POINTS = 100_000
# Points per bucket in the output: min and max (and the first NaN where there is one).
POINTS_PER_BUCKET = 2
ESTIMATE_ROWS = 2048


def series_points(
    session: Session, series: Series, max_points: int = DEFAULT_MAX_POINTS,
    start: int | None = None, end: int | None = None,
) -> dict[str, Any]:
    """Points of ``series`` with steps in [start, end], at most about ``max_points`` of them, in step order.

    Returns ``{"points": [{"step", "time", "value"}], "downsampled": bool, "total": points in range (approx)}``.
    """
    max_points = max(2, min(max_points, MAX_MAX_POINTS))
    lo, hi = _bounds(session, series.id, start, end)
    if lo is None or hi is None or lo > hi:
        return {"points": [], "downsampled": False, "total": 0}
    total, nans = _estimate(session, series.id, lo, hi)
    if total <= max_points:
        pts = _raw(session, series.id, lo, hi, series.downsampled_before)
        return {"points": [_point(s, t, v) for s, t, v in pts], "downsampled": False, "total": len(pts)}
    per_bucket = POINTS_PER_BUCKET + (1 if nans else 0)
    buckets = max(1, max_points // per_bucket)
    width = max(1, math.ceil((hi - lo + 1) / buckets))
    acc: dict[int, list] = {}
    for summary in _summaries(session, series.id, lo, hi, width, series.downsampled_before):
        key = (summary[rollup.FIRST] - lo) // width
        cur = acc.get(key)
        if cur is None:
            acc[key] = list(summary)
        else:
            rollup.merge(cur, summary)
    points: list[dict[str, Any]] = []
    for key in sorted(acc):
        points.extend(_bucket_points(acc[key]))
    return {"points": points, "downsampled": True, "total": total}


def raw_page(session: Session, series: Series, start: int, end: int | None, limit: int) -> dict[str, Any]:
    """The first ``limit`` raw points with step >= ``start`` (and <= ``end``): page through a whole series."""
    limit = max(1, min(limit, MAX_MAX_POINTS))
    hi = end if end is not None else 2**62
    pts = _raw(session, series.id, start, hi, series.downsampled_before, limit=limit)
    return {"points": [_point(s, t, v) for s, t, v in pts], "downsampled": False, "total": len(pts)}


def layer_heatmap(
    session: Session, run_id: int, metric: str, max_steps: int = 200, order: Any = None,
) -> dict[str, Any]:
    """Mean of ``metric/<layer>`` per step bucket for every layer: ``{"layers", "steps", "values"}``.

    ``values[i][j]`` is layer i's mean over bucket j (NaN when only NaN arrived, None when nothing did).
    Layers come in ``order`` (the model's parameter names, as the hooks send them in run info); layers not
    in it, or all of them when a run has none, follow in the order their series were first stored.
    """
    max_steps = max(1, min(max_steps, 5000))
    rows = session.execute(
        text(
            "SELECT id, name, downsampled_before FROM series WHERE run_id = :run AND name LIKE :prefix ESCAPE '\\' "
            "ORDER BY id"
        ),
        {"run": run_id, "prefix": _like_prefix(metric + "/")},
    ).all()
    rows = _in_model_order(rows, order)
    if not rows:
        return {"metric": metric, "layers": [], "steps": [], "values": []}
    ids = [r.id for r in rows]
    lo, hi = session.execute(
        text(
            "SELECT min(first_step), max(last_step) FROM rollups WHERE level = :top AND series_id IN :ids"
        ).bindparams(_expanding("ids")),
        {"top": rollup.LEVELS[-1], "ids": ids},
    ).one()
    if lo is None:
        return {"metric": metric, "layers": [r.name.split("/", 1)[1] for r in rows], "steps": [], "values": []}
    width = max(1, math.ceil((hi - lo + 1) / max_steps))
    level = _level_for(width)
    if level > 1:
        width = math.ceil(width / level) * level  # buckets made of whole blocks
        lo = (lo // level) * level
    nbuckets = (hi - lo) // width + 1
    sums = {sid: [0.0] * nbuckets for sid in ids}
    counts = {sid: [0] * nbuckets for sid in ids}
    nan_seen = {sid: [False] * nbuckets for sid in ids}
    if level == 1:
        q = text(
            "SELECT series_id, step, value FROM points WHERE series_id IN :ids AND step >= :lo AND step <= :hi"
        ).bindparams(_expanding("ids"))
        for sid, step, value in session.execute(q, {"ids": ids, "lo": lo, "hi": hi}):
            b = (step - lo) // width
            if value is None:
                nan_seen[sid][b] = True
            else:
                sums[sid][b] += value
                counts[sid][b] += 1
    else:
        q = text(
            "SELECT series_id, first_step, n, nans, vsum FROM rollups WHERE level = :level AND series_id IN :ids"
        ).bindparams(_expanding("ids"))
        for sid, first, n, nans, vsum in session.execute(q, {"ids": ids, "level": level}):
            b = (first - lo) // width
            if nans:
                nan_seen[sid][b] = True
            if vsum is not None:
                sums[sid][b] += vsum
                counts[sid][b] += n - nans
    values = []
    for sid in ids:
        values.append([
            sums[sid][b] / counts[sid][b] if counts[sid][b] else (NAN if nan_seen[sid][b] else None)
            for b in range(nbuckets)
        ])
    return {
        "metric": metric,
        "layers": [r.name.split("/", 1)[1] for r in rows],
        "steps": [lo + b * width for b in range(nbuckets)],
        "bucket_steps": width,
        "values": values,
    }


# -- helpers --------------------------------------------------------------------------------------------------


def _in_model_order(rows: list, order: Any) -> list:
    """``rows`` (series, first stored first) sorted by their layer's place in ``order``; the rest after them,
    as they were (a stable sort). ``order`` is read from stored run info, which could hold anything before
    the field was checked at ingest: anything but a list of names is ignored."""
    if not isinstance(order, list):
        return rows
    place: dict[str, int] = {}
    for i, name in enumerate(order):
        if isinstance(name, str):
            place.setdefault(name, i)
    return sorted(rows, key=lambda r: place.get(r.name.split("/", 1)[1], len(order)))


def _point(step: int, t: float, v: float | None) -> dict[str, Any]:
    return {"step": step, "time": t, "value": decode(v)}


def _bucket_points(s: list) -> list[dict[str, Any]]:
    pts = []
    if s[rollup.VMIN] is not None:
        pts.append((s[rollup.VMIN_STEP], s[rollup.VMIN_TIME], s[rollup.VMIN]))
        if s[rollup.VMAX_STEP] != s[rollup.VMIN_STEP]:
            pts.append((s[rollup.VMAX_STEP], s[rollup.VMAX_TIME], s[rollup.VMAX]))
    if s[rollup.NAN_STEP] is not None:
        pts.append((s[rollup.NAN_STEP], s[rollup.NAN_TIME], NAN))
    pts.sort(key=lambda p: p[0])
    return [{"step": st, "time": t, "value": v} for st, t, v in pts]


def _bounds(session: Session, sid: int, start: int | None, end: int | None) -> tuple[int | None, int | None]:
    lo = start
    hi = end
    if lo is None:
        lo = session.execute(
            text("SELECT min(first_step) FROM rollups WHERE series_id = :sid AND level = :top"),
            {"sid": sid, "top": rollup.LEVELS[-1]},
        ).scalar()
    if hi is None:
        hi = session.execute(
            text("SELECT max(last_step) FROM rollups WHERE series_id = :sid AND level = :top"),
            {"sid": sid, "top": rollup.LEVELS[-1]},
        ).scalar()
    return lo, hi


def _estimate(session: Session, sid: int, lo: int, hi: int) -> tuple[int, int]:
    """Points and NaNs in [lo, hi], summed over the blocks overlapping it (an upper bound): the finest level
    that needs at most ``ESTIMATE_ROWS`` rows, so a short zoomed range is counted almost exactly."""
    top = next((lvl for lvl in rollup.LEVELS if (hi - lo) // lvl <= ESTIMATE_ROWS), rollup.LEVELS[-1])
    n, nans = session.execute(
        text(
            "SELECT coalesce(sum(n), 0), coalesce(sum(nans), 0) FROM rollups "
            "WHERE series_id = :sid AND level = :top AND block >= :b0 AND block <= :b1"
        ),
        {"sid": sid, "top": top, "b0": lo // top, "b1": hi // top},
    ).one()
    return int(n), int(nans)


def _level_for(width: int) -> int:
    level = 1
    for candidate in rollup.LEVELS:
        if candidate <= width:
            level = candidate
    return level


def _raw(session: Session, sid: int, lo: int, hi: int, thinned_below: int | None, limit: int | None = None) -> list[tuple]:
    """Raw (step, time, stored value) rows in [lo, hi]; below the retention mark, its finest summaries."""
    out: list[tuple] = []
    if thinned_below is not None and lo < thinned_below:
        for s in _rollup_rows(session, sid, rollup.LEVELS[0], lo, min(hi, thinned_below - 1)):
            out.extend((p["step"], p["time"], None if p["value"] != p["value"] else p["value"])
                       for p in _bucket_points(s))
        lo = thinned_below
    if lo <= hi and (limit is None or len(out) < limit):
        sql = "SELECT step, time, value FROM points WHERE series_id = :sid AND step >= :lo AND step <= :hi ORDER BY step"
        params: dict[str, Any] = {"sid": sid, "lo": lo, "hi": hi}
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit - len(out)
        out.extend(tuple(r) for r in session.execute(text(sql), params))
    return out[:limit] if limit is not None else out


def _rollup_rows(session: Session, sid: int, level: int, lo: int, hi: int) -> list[list]:
    cols = ", ".join(rollup.COLUMNS)
    return [
        list(r) for r in session.execute(
            text(
                f"SELECT {cols} FROM rollups WHERE series_id = :sid AND level = :level "
                "AND block >= :b0 AND block <= :b1 ORDER BY block"
            ),
            {"sid": sid, "level": level, "b0": lo // level, "b1": hi // level},
        )
    ]


def _summaries(session: Session, sid: int, lo: int, hi: int, width: int, thinned_below: int | None):
    """Summaries covering [lo, hi] exactly: whole blocks from rollups, the ragged edges from raw points."""
    level = _level_for(width)
    if level == 1:
        for s, t, v in _raw(session, sid, lo, hi, thinned_below):
            yield rollup.point_summary(s, t, v)
        return
    first_full = -(-lo // level)  # first block wholly inside [lo, hi]
    last_full = (hi + 1) // level - 1
    if first_full > last_full:
        yield from _summaries(session, sid, lo, hi, level - 1, thinned_below)
        return
    if lo < first_full * level:
        yield from _summaries(session, sid, lo, first_full * level - 1, level - 1, thinned_below)
    yield from _rollup_rows(session, sid, level, first_full * level, (last_full + 1) * level - 1)
    if (last_full + 1) * level <= hi:
        yield from _summaries(session, sid, (last_full + 1) * level, hi, level - 1, thinned_below)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _expanding(name: str):
    from sqlalchemy import bindparam

    return bindparam(name, expanding=True)


def all_points(session: Session, series: Series) -> list[dict[str, Any]]:
    """Every stored point in step order (below the retention mark: its finest summaries)."""
    return [_point(s, t, v) for s, t, v in _raw(session, series.id, 0, 2**62, series.downsampled_before)]
