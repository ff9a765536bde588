"""Block summaries of series (min, max, first NaN, sum, count) at a few fixed widths.

Reading a 1M-point series as 2,000 points must not touch 1M rows, so ingest keeps, for every series, one
summary row per block of ``L`` steps for each ``L`` in ``LEVELS`` (table ``rollups``). A downsampled read
picks the coarsest level narrower than its bucket and merges at most 16 summaries per bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

# Block widths in steps. Powers of 16: a read merges fewer than 16 rows per output bucket, and ingest
# writes three small rows per series per batch.
LEVELS = (16, 256, 4096)
LEVEL_SHIFT = {16: 4, 256: 8, 4096: 12}

# A summary is a list, in this column order (the rollups table's, after series_id and level):
COLUMNS = (
    "block", "n", "nans", "first_step", "last_step", "nan_step", "nan_time",
    "vmin", "vmin_step", "vmin_time", "vmax", "vmax_step", "vmax_time", "vsum",
)
BLOCK, N, NANS, FIRST, LAST, NAN_STEP, NAN_TIME, VMIN, VMIN_STEP, VMIN_TIME, VMAX, VMAX_STEP, VMAX_TIME, VSUM = range(14)


def summarize(points: Sequence[Sequence], level: int) -> list[list]:
    """Summaries at ``level`` of ``points``: rows starting ``(step, time, stored value)``, sorted by step,
    one per step, value None for NaN (ingest rows carry the series id after them)."""
    if not points:
        return []
    shift = LEVEL_SHIFT[level]
    steps = [p[0] for p in points]
    out: list[list] = []
    i = 0
    n = len(points)
    # Per block, slices and builtins (min, max, index, sum run in C): 4x faster than a per-point loop,
    # which matters because ingest summarizes every point it stores.
    while i < n:
        b = steps[i] >> shift
        j = bisect_left(steps, (b + 1) << shift, i)
        chunk = points[i:j]
        vals = [p[2] for p in chunk]
        nans = 0
        nan_step = nan_time = None
        if None in vals:
            k = vals.index(None)
            nan_step, nan_time = chunk[k][0], chunk[k][1]
            vals = [v for v in vals if v is not None]
            nans = len(chunk) - len(vals)
            chunk = [p for p in chunk if p[2] is not None]
        if vals:
            vmin = min(vals)
            vmax = max(vals)
            pmin = chunk[vals.index(vmin)]
            pmax = chunk[vals.index(vmax)]
            out.append([b, j - i, nans, steps[i], steps[j - 1], nan_step, nan_time,
                        vmin, pmin[0], pmin[1], vmax, pmax[0], pmax[1], sum(vals)])
        else:
            out.append([b, j - i, nans, steps[i], steps[j - 1], nan_step, nan_time,
                        None, None, None, None, None, None, None])
        i = j
    return out


def merge(acc: list, s: Sequence) -> None:
    """Fold summary ``s`` (later or earlier steps than ``acc``) into ``acc`` in place; ``acc[BLOCK]`` kept."""
    acc[N] += s[N]
    acc[NANS] += s[NANS]
    if s[FIRST] < acc[FIRST]:
        acc[FIRST] = s[FIRST]
    if s[LAST] > acc[LAST]:
        acc[LAST] = s[LAST]
    if s[NAN_STEP] is not None and (acc[NAN_STEP] is None or s[NAN_STEP] < acc[NAN_STEP]):
        acc[NAN_STEP], acc[NAN_TIME] = s[NAN_STEP], s[NAN_TIME]
    if s[VMIN] is not None:
        if acc[VMIN] is None or s[VMIN] < acc[VMIN]:
            acc[VMIN], acc[VMIN_STEP], acc[VMIN_TIME] = s[VMIN], s[VMIN_STEP], s[VMIN_TIME]
        if acc[VMAX] is None or s[VMAX] > acc[VMAX]:
            acc[VMAX], acc[VMAX_STEP], acc[VMAX_TIME] = s[VMAX], s[VMAX_STEP], s[VMAX_TIME]
        acc[VSUM] = s[VSUM] if acc[VSUM] is None else acc[VSUM] + s[VSUM]


def coarsen(summaries: Iterable[Sequence], to_level: int) -> list[list]:
    """Summaries at ``to_level`` from finer summaries (sorted by block)."""
    shift = LEVEL_SHIFT[to_level]
    out: list[list] = []
    cur = None
    for s in summaries:
        b = s[FIRST] >> shift
        if cur is None or cur[BLOCK] != b:
            cur = list(s)
            cur[BLOCK] = b
            out.append(cur)
        else:
            merge(cur, s)
    return out


def all_levels(points: Sequence[Sequence]) -> dict[int, list[list]]:
    """Summaries of ``points`` at every level in ``LEVELS``."""
    result: dict[int, list[list]] = {}
    prev = summarize(points, LEVELS[0])
    result[LEVELS[0]] = prev
    for level in LEVELS[1:]:
        prev = coarsen(prev, level)
        result[level] = prev
    return result


def point_summary(step: int, t: float, v: float | None) -> list:
    """A one-point summary (raw points and summaries go through the same bucket merge)."""
    if v is None:
        return [0, 1, 1, step, step, step, t, None, None, None, None, None, None, None]
    return [0, 1, 0, step, step, None, None, v, step, t, v, step, t, v]
