"""A scenario's true per-step values, to check that its fault really shows (and when).

``true_values(scenario)`` trains the scenario again with txwatch capturing everything at every step
(``grad_every=1, update_every=1``: nothing sampled), so the figures are those of each step: loss, validation
loss, total and per-layer gradient norms (before clipping), update ratios, learning rates, data wait, and the
GradScaler's scale and skips. ``Truth`` reads them; ``table()`` prints one line per step.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.scenarios.record import EVERY_STEP, Recording, record
from benchmarks.scenarios.spec import Scenario


@dataclass
class Truth:
    """Every series of one run, by name then step, and how the run ended."""

    series: dict[str, dict[int, float]]
    end: dict[str, Any] | None
    recording: Recording

    @classmethod
    def of(cls, recording: Recording) -> Truth:
        series: dict[str, dict[int, float]] = {}
        end = None
        for body in recording.batches:
            for name, points in body.get("series", {}).items():
                into = series.setdefault(name, {})
                for step, _, value in points:
                    into[int(step)] = float(value)
            for event in body.get("events", []):
                if event["kind"] == "end":
                    end = event
        return cls(series, end, recording)

    # -- reading ---------------------------------------------------------------------------------------------

    def get(self, name: str) -> dict[int, float]:
        return self.series.get(name, {})

    def layers(self, prefix: str) -> dict[str, dict[int, float]]:
        """Per-layer series ``prefix/<layer>`` by layer."""
        return {n.split("/", 1)[1]: v for n, v in self.series.items() if n.startswith(prefix + "/")}

    def mean(self, name: str, lo: int, hi: int) -> float:
        """Mean of the finite values at steps lo..hi (inclusive); NaN when there are none."""
        vals = [v for s, v in self.get(name).items() if lo <= s <= hi and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan

    def first_nonfinite(self, name: str = "loss") -> int | None:
        return next((s for s, v in sorted(self.get(name).items()) if not math.isfinite(v)), None)

    def last_step(self) -> int:
        return max((max(v) for v in self.series.values() if v), default=0)

    def status(self) -> str:
        return "never ended (vanished)" if self.end is None else str(self.end.get("status"))

    def layer_span(self, step: int) -> tuple[float, float, int]:
        """(smallest non-zero, largest) layer gradient norm at ``step``, and how many layers are exactly 0."""
        vals = [v[step] for v in self.layers("grad_norm").values() if step in v and math.isfinite(v[step])]
        nonzero = [v for v in vals if v > 0]
        return (min(nonzero) if nonzero else math.nan, max(vals) if vals else math.nan,
                sum(v == 0 for v in vals))

    def median_update(self, step: int) -> float:
        vals = [v[step] for n, v in self.layers("update_ratio").items() if n.endswith("weight") and step in v]
        return statistics.median(vals) if vals else math.nan

    # -- printing --------------------------------------------------------------------------------------------

    def table(self, every: int = 1) -> str:
        head = (f"{'step':>6} {'loss':>10} {'val_loss':>9} {'grad_total':>10} {'layer_min':>9} {'layer_max':>9} "
                f"{'zero':>4} {'upd_med':>9} {'lr/0':>9} {'wait%':>5} {'scale':>8} {'skips':>5}")
        lines = [head]
        for step in range(1, self.last_step() + 1):
            if step % every and step != 1 and step not in self.get("val_loss"):
                continue
            lo, hi, zero = self.layer_span(step)
            scale = self.get("loss_scale").get(step)
            lines.append(
                f"{step:>6} {_g(self.get('loss').get(step)):>10} {_g(self.get('val_loss').get(step)):>9} "
                f"{_g(self.get('grad_norm_total').get(step)):>10} {_g(lo):>9} {_g(hi):>9} {zero:>4} "
                f"{_g(self.median_update(step)):>9} {_g(self.get('lr/0').get(step)):>9} "
                f"{_pct(self.get('data_wait_share').get(step)):>5} {_g(scale):>8} "
                f"{_g(self.get('scaler_skipped').get(step)):>5}")
        lines.append(f"ended: {self.status()}" + (f" ({self.recording.error})" if self.recording.error else ""))
        return "\n".join(lines)


def _g(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def true_values(scenario: Scenario) -> Truth:
    """Train ``scenario`` with every step captured and return its true values."""
    return Truth.of(record(scenario, EVERY_STEP))


def check(scenario: Scenario, truth: Truth) -> tuple[bool, str]:
    """Whether the scenario's claim holds on its true values: (holds, the figures that say so or why not)."""
    if scenario.shows is None:
        return True, "no claim to check"
    try:
        return True, scenario.shows(truth)
    except AssertionError as exc:
        return False, str(exc) or "the fault does not show"
