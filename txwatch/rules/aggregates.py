"""Aggregates: one number from a window of a series (pure functions, no state)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from txwatch.rules.language import WINDOW_ONLY, Window
from txwatch.rules.buffers import SeriesBuffer

_isfinite = math.isfinite


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if _isfinite(v)]


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def _mean(steps, values, extra):
    f = _finite(values)
    return sum(f) / len(f) if f else None


def _median(steps, values, extra):
    f = _finite(values)
    return _percentile(sorted(f), 50.0) if f else None


def _pct(steps, values, extra):
    f = _finite(values)
    return _percentile(sorted(f), extra[0]) if f else None


def _min(steps, values, extra):
    f = _finite(values)
    return min(f) if f else None


def _max(steps, values, extra):
    f = _finite(values)
    return max(f) if f else None


def _sum(steps, values, extra):
    f = _finite(values)
    return math.fsum(f) if f else None


def _std(steps, values, extra):
    f = _finite(values)
    if not f:
        return None
    m = sum(f) / len(f)
    return math.sqrt(sum((v - m) ** 2 for v in f) / len(f))


def _slope(steps, values, extra):
    pts = [(s, v) for s, v in zip(steps, values) if _isfinite(v)]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _noise(steps, values, extra):
    """The series' own step-to-step noise in decades: the median of |log10(v[i] / v[i-1])| over its positive
    values (a robust scale for thresholds on a series that moves by factors, such as a gradient norm)."""
    logs = [math.log10(v) for v in values if _isfinite(v) and v > 0]
    if len(logs) < 4:
        return None
    return _percentile(sorted(abs(b - a) for a, b in zip(logs, logs[1:])), 50.0)


def _trend(steps, values, extra):
    """Mann-Kendall's trend statistic over the window, as Kendall's tau of value against step: +1 when every
    later value is above every earlier one, -1 when below, near 0 without a trend (needs 3 values)."""
    pts = [(st, v) for st, v in zip(steps, values) if _isfinite(v)]
    if len(pts) < 3:
        return None
    s = 0
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            d = pts[j][1] - pts[i][1]
            s += (d > 0) - (d < 0)
    return s / (len(pts) * (len(pts) - 1) / 2)


def _nonfinite(steps, values, extra):
    return float(sum(1 for v in values if not _isfinite(v)))


def _count(steps, values, extra):
    return float(len(values))


def _last(steps, values, extra):
    return values[-1] if values else None


def _first(steps, values, extra):
    return values[0] if values else None


WINDOWED: dict[str, Callable] = {
    "mean": _mean,
    "median": _median,
    "percentile": _pct,
    "min": _min,
    "max": _max,
    "sum": _sum,
    "std": _std,
    "slope": _slope,
    "noise": _noise,
    "trend": _trend,
    "nonfinite": _nonfinite,
    "count": _count,
    "last": _last,
    "first": _first,
}


_FILTERING = {
    "mean": lambda steps, values, extra: sum(values) / len(values),
    "median": lambda steps, values, extra: _percentile(sorted(values), 50.0),
    "percentile": lambda steps, values, extra: _percentile(sorted(values), extra[0]),
    "min": lambda steps, values, extra: min(values),
    "max": lambda steps, values, extra: max(values),
    "nonfinite": lambda steps, values, extra: 0.0,
}


def whole_run(name: str, buf: SeriesBuffer, extra: tuple[float, ...]) -> float | None:
    """An aggregate over every point since the series started, from the running aggregates."""
    if name == "count":
        return float(buf.n)
    if name == "nonfinite":
        return float(buf.n_nonfinite)
    if name == "last":
        return buf.last_value if buf.n else None
    if name == "first":
        return buf.first_value if buf.n else None
    if buf.n_finite == 0:
        return None
    if name == "mean":
        return buf.mean
    if name == "min":
        return buf.vmin
    if name == "max":
        return buf.vmax
    if name == "sum":
        return buf.sy
    if name == "std":
        return math.sqrt(max(buf.m2, 0.0) / buf.n_finite)
    if name == "slope":
        n = buf.n_finite
        denom = buf.sxx - buf.sx * buf.sx / n
        if n < 2 or denom <= 0:
            return None
        return (buf.sxy - buf.sx * buf.sy / n) / denom
    if name in WINDOW_ONLY:  # needs the points themselves: a window (the checker asks for one)
        return None
    if name in ("median", "percentile"):
        if buf.sketch is None:
            return None
        q = 0.5 if name == "median" else extra[0] / 100.0
        return buf.sketch.quantile(q)
    raise ValueError(f"unknown aggregate {name}")


def aggregate(
    name: str, buf: SeriesBuffer, window: Window, extra: tuple[float, ...] = (), as_of: int | None = None
) -> float | None:
    """``name`` over ``window`` of ``buf`` as of step ``as_of``; None when there is no data (or the window is not
    yet complete). Whole-run aggregates are running figures: they include every point received so far."""
    if window.kind == "all":
        if name == "last" and as_of is not None and buf.steps and as_of < buf.steps[-1]:
            picked = buf.select(Window("points", 1), as_of)  # a late point: the value as of that step
            return picked[1][-1] if picked and picked[1] else None
        return whole_run(name, buf, extra)
    if window.kind == "points" and not buf.bad and name in _FILTERING:
        # the commonest case (the last few points of a series with nothing non-finite, as of its latest step):
        # ``select`` inlined, slicing only the values these aggregates read
        steps = buf.steps
        if buf.n == 0 or not steps:
            return None
        if as_of is None or as_of >= steps[-1]:
            size, shift = int(window.size), int(window.shift)
            end = len(steps)
            stop = end - shift
            if buf.n < size + shift or stop - size < 0 and buf.n > end:
                return None
            values = buf.values[max(stop - size, 0) : max(stop, 0)]
            if not values and name != "nonfinite":
                return None
            return _FILTERING[name](None, values, extra)
    picked = buf.select(window, as_of)
    if picked is None:
        return None
    steps, values = picked
    if not values and name not in ("count", "nonfinite"):
        return None
    if not buf.bad and name in _FILTERING:  # nothing non-finite in the buffer: skip the filtering
        return _FILTERING[name](steps, values, extra)
    return WINDOWED[name](steps, values, extra)
