"""Per-series state: a bounded, step-ordered buffer of recent points plus running aggregates since the start.

The buffer keeps only what the loaded rules' windows can reach (``Needs``), so its size is bounded by the rules,
not by the run's length. Running aggregates (count, min, max, mean, std, slope, first/last, an optional quantile
sketch) are O(1) per point. Points may arrive out of step order: they are inserted in place, and a step seen
twice keeps its latest value in the buffer (running aggregates count it once).
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

from txwatch.rules.language import Window
from txwatch.rules.sketch import QuantileSketch

# A time window (last=30s) keeps at most this many points: a job logging 1000 steps/s for 10 s already fits.
MAX_BUFFER_POINTS = 10_000


@dataclass
class Needs:
    """How much history the rules need from one series."""

    steps: float = 0.0  # step span: window + shift
    seconds: float = 0.0  # time span: window + shift
    points: int = 0  # trailing points: window + shift
    first: int = 0  # steps from the series' start kept as a baseline
    sketch: bool = False  # whole-run median/percentile

    def add_window(self, window: Window, aggregate: str) -> None:
        span = window.size + window.shift
        if window.kind == "steps":
            self.steps = max(self.steps, span)
        elif window.kind == "seconds":
            self.seconds = max(self.seconds, span)
        elif window.kind == "points":
            self.points = max(self.points, int(span))
        elif window.kind == "first":
            self.first = max(self.first, int(window.size))
        elif aggregate in ("median", "percentile"):
            self.sketch = True

    def merge(self, other: Needs) -> None:
        self.steps = max(self.steps, other.steps)
        self.seconds = max(self.seconds, other.seconds)
        self.points = max(self.points, other.points)
        self.first = max(self.first, other.first)
        self.sketch = self.sketch or other.sketch


class SeriesBuffer:
    """Recent points of one series (sorted by step) and its running aggregates."""

    __slots__ = (
        "needs",
        "steps",
        "times",
        "values",
        "head",
        "n",
        "n_nonfinite",
        "n_finite",
        "mean",
        "m2",
        "vmin",
        "vmax",
        "first_step",
        "first_time",
        "first_value",
        "last_step",
        "last_time",
        "last_value",
        "x0",
        "sx",
        "sy",
        "sxx",
        "sxy",
        "sketch",
        "times_sorted",
        "bad",
        "memo",
        "patterns",
    )

    def __init__(self, needs: Needs):
        self.needs = needs
        self.steps: list[int] = []
        self.times: list[float] = []
        self.values: list[float] = []
        self.head: list[list[float]] = []  # [step, time, value] of the first `needs.first` steps
        self.n = 0
        self.n_nonfinite = 0
        self.n_finite = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.vmin = math.inf
        self.vmax = -math.inf
        self.first_step: int | None = None
        self.first_time = 0.0
        self.first_value = math.nan
        self.last_step: int | None = None
        self.last_time = 0.0
        self.last_value = math.nan
        self.x0: int | None = None
        self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.sketch = QuantileSketch() if needs.sketch else None
        self.times_sorted = True
        self.bad = 0  # non-finite values in the buffer: when none, aggregates skip filtering them out
        # aggregate results for the buffer as it is now (cleared by every add): a series that did not change
        # since the last step costs a dict lookup, however many rules and steps read it
        self.memo: dict = {}
        self.patterns: tuple[str, ...] = ()  # the rule patterns this series belongs to (set by the run state)

    # ------------------------------------------------------------ writing

    def add(self, step: int, time: float, value: float) -> None:
        if self.memo:
            self.memo.clear()
        steps = self.steps
        if steps and step <= steps[-1]:
            i = bisect_left(steps, step)
            if i < len(steps) and steps[i] == step:  # a replayed or rewritten step: last write wins
                self.bad += (not math.isfinite(value)) - (not math.isfinite(self.values[i]))
                self.values[i] = value
                self.times[i] = time
                return
        self._running(step, time, value)
        if not math.isfinite(value):
            self.bad += 1
        if not steps or step > steps[-1]:
            if self.times and time < self.times[-1]:
                self.times_sorted = False
            steps.append(step)
            self.times.append(time)
            self.values.append(value)
        else:
            i = bisect_left(steps, step)
            steps.insert(i, step)
            self.times.insert(i, time)
            self.values.insert(i, value)
            self.times_sorted = False
        if self.needs.first and step < self.first_step + self.needs.first:
            self._add_head(step, time, value)
        self._trim()

    def _running(self, step: int, time: float, value: float) -> None:
        self.n += 1
        if self.first_step is None or step < self.first_step:
            self.first_step, self.first_time, self.first_value = step, time, value
        if self.last_step is None or step > self.last_step:
            self.last_step, self.last_time, self.last_value = step, time, value
        if not math.isfinite(value):
            self.n_nonfinite += 1
            return
        self.n_finite += 1
        delta = value - self.mean
        self.mean += delta / self.n_finite
        self.m2 += delta * (value - self.mean)
        if value < self.vmin:
            self.vmin = value
        if value > self.vmax:
            self.vmax = value
        if self.x0 is None:
            self.x0 = step
        x = float(step - self.x0)  # centred on the first step: keeps the sums exact for long runs
        self.sx += x
        self.sy += value
        self.sxx += x * x
        self.sxy += x * value
        if self.sketch is not None:
            self.sketch.add(value)

    def _add_head(self, step: int, time: float, value: float) -> None:
        head = self.head
        i = bisect_left([p[0] for p in head], step) if head and step < head[-1][0] else len(head)
        head.insert(i, [step, time, value])
        limit = self.first_step + self.needs.first
        while head and head[-1][0] >= limit:
            head.pop()

    def _trim(self) -> None:
        needs = self.needs
        steps = self.steps
        n = len(steps)
        keep_from = n - max(needs.points, 1)  # always keep the latest point
        if needs.steps:
            # keep the last point at or before the oldest window's start too: ``select`` reads it as the proof
            # that nothing the window needs was dropped (on a series sampled every few steps, the first point
            # inside the window may lie several steps after the window's start)
            keep_from = min(keep_from, max(bisect_right(steps, steps[-1] - needs.steps) - 1, 0))
        if needs.seconds:
            cutoff = self.times[-1] - needs.seconds
            if self.times_sorted:
                keep_from = min(keep_from, bisect_right(self.times, cutoff))
            else:
                j = keep_from
                while j > 0 and self.times[j - 1] > cutoff:
                    j -= 1
                keep_from = j
        keep_from = max(keep_from, n - MAX_BUFFER_POINTS, 0)
        if keep_from > 0:
            if self.bad:
                self.bad -= sum(1 for v in self.values[:keep_from] if not math.isfinite(v))
            del steps[:keep_from]
            del self.times[:keep_from]
            del self.values[:keep_from]

    # ------------------------------------------------------------ reading

    def select(self, window: Window, as_of: int | None = None) -> tuple[list[int], list[float]] | None:
        """Steps and values in ``window`` as of step ``as_of`` (default: the latest), or None when the window
        reaches before the series' history (or before what the buffer still holds)."""
        if self.n == 0 or not self.steps:
            return None
        end = len(self.steps) if as_of is None or as_of >= self.steps[-1] else bisect_right(self.steps, as_of)
        if end == 0:
            return None
        kind = window.kind
        if kind == "steps":
            hi_step = self.steps[end - 1] - window.shift
            lo_step = hi_step - window.size
            if self.first_step > lo_step + 1 or (self.steps[0] > lo_step + 1 and self.steps[0] > self.first_step):
                return None
            hi = bisect_right(self.steps, hi_step, 0, end)
            lo = bisect_right(self.steps, lo_step, 0, hi)
            return self.steps[lo:hi], self.values[lo:hi]
        if kind == "points":
            size, shift = int(window.size), int(window.shift)
            stop = end - shift
            if self.n - (len(self.steps) - end) < size + shift or stop - size < 0 and self.n > len(self.steps):
                return None
            return self.steps[max(stop - size, 0) : max(stop, 0)], self.values[max(stop - size, 0) : max(stop, 0)]
        if kind == "seconds":
            hi_t = self.times[end - 1] - window.shift
            lo_t = hi_t - window.size
            if self.first_time > lo_t:
                return None
            if self.times_sorted:
                hi = bisect_right(self.times, hi_t, 0, end)
                lo = bisect_right(self.times, lo_t, 0, hi)
                return self.steps[lo:hi], self.values[lo:hi]
            idx = [i for i in range(end) if lo_t < self.times[i] <= hi_t]
            return [self.steps[i] for i in idx], [self.values[i] for i in idx]
        if kind == "first":
            if self.steps[end - 1] < self.first_step + window.size - 1:
                return None
            limit = self.first_step + window.size
            pts = [p for p in self.head if p[0] < limit]
            return [int(p[0]) for p in pts], [p[2] for p in pts]
        raise ValueError(f"select() does not serve {kind} windows")

    # ------------------------------------------------------------ saving

    def to_state(self) -> dict[str, Any]:
        # the point arrays as packed binary: an order of magnitude faster to save than JSON numbers
        return {
            "s": _pack("q", self.steps),
            "t": _pack("d", self.times),
            "v": _pack("d", self.values),
            "h": self.head,
            "r": [
                self.n,
                self.n_nonfinite,
                self.n_finite,
                self.mean,
                self.m2,
                self.vmin,
                self.vmax,
                self.first_step,
                self.first_time,
                self.first_value,
                self.last_step,
                self.last_time,
                self.last_value,
                self.x0,
                self.sx,
                self.sy,
                self.sxx,
                self.sxy,
                self.times_sorted,
            ],
            "q": self.sketch.to_state() if self.sketch is not None else None,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], needs: Needs) -> SeriesBuffer:
        b = cls(needs)
        b.steps, b.times, b.values = _unpack("q", state["s"]), _unpack("d", state["t"]), _unpack("d", state["v"])
        b.head = list(state["h"])
        (
            b.n,
            b.n_nonfinite,
            b.n_finite,
            b.mean,
            b.m2,
            b.vmin,
            b.vmax,
            b.first_step,
            b.first_time,
            b.first_value,
            b.last_step,
            b.last_time,
            b.last_value,
            b.x0,
            b.sx,
            b.sy,
            b.sxx,
            b.sxy,
            b.times_sorted,
        ) = state["r"]
        if state.get("q") is not None:
            b.sketch = QuantileSketch.from_state(state["q"])
        elif needs.sketch and b.sketch is None:
            b.sketch = QuantileSketch()
        b.bad = sum(1 for v in b.values if not math.isfinite(v))
        if b.steps:  # the rules may have changed since the save: apply the current needs
            b._trim()
        return b


def _pack(code: str, values: list) -> str:
    arr = array(code, values)
    if sys.byteorder != "little":  # saved little-endian, so a state moves between machines
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def _unpack(code: str, packed: str) -> list:
    arr = array(code)
    arr.frombytes(base64.b64decode(packed))
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tolist()
