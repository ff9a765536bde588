"""What the training side queues. Values may still be tensors on the device: ``emit`` runs on the worker
thread, which is where they are read (the host-device sync happens there, off the training loop)."""

from __future__ import annotations

import math
from typing import Any

from txwatch_hooks import wire
from txwatch_hooks.wire import BatchBuilder


def to_float(value: Any) -> float:
    """A number from a Python number or a one-element tensor (reading a device tensor waits for it)."""
    if isinstance(value, float):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    return float(value)


SPIKE_RATIO = 1.25  # grad_norm_max/<param> is sent where the interval's largest norm is above this x the last


class Points:
    """Scalars at one step: ``{name: number or one-element tensor}``."""

    __slots__ = ("step", "time", "values", "count")

    def __init__(self, step: int, time: float, values: dict[str, Any]):
        self.step, self.time, self.values = step, time, values
        self.count = len(values)

    def emit(self, builder: BatchBuilder) -> None:
        for name, value in self.values.items():
            builder.add_point(name, self.step, self.time, to_float(value))


class Event:
    """A lifecycle event (start, heartbeat, end), already a wire dict."""

    __slots__ = ("event", "count")

    def __init__(self, event: dict[str, Any]):
        self.event = event
        self.count = 1

    def emit(self, builder: BatchBuilder) -> None:
        builder.add_event(self.event)


class SampledStep:
    """One sampled step's gradient and update figures, as device tensors grouped by (device, dtype).

    grads: [(param names, stacked per-parameter grad norms)]; nonfinite: [count tensors];
    updates: [(param names, stacked norms before the step, stacked norms of the change)];
    scaler: a ``txwatch_hooks.scaler.ScalerSample`` when a GradScaler is known (the norms are then divided
    by its scale, and a step it skipped sends only the scaler's figures);
    interval: a ``txwatch_hooks.grads.IntervalSample``, every step's norms since the previous sample (sent
    as ``grad_norm_total_max`` / ``_mean``, ``grad_nonfinite_steps`` and per layer ``grad_norm_max/<param>``).
    """

    __slots__ = ("step", "time", "grads", "nonfinite", "updates", "layers", "scaler", "interval", "suffix", "count")

    def __init__(self, step: int, time: float, grads: list | None, nonfinite: list | None,
                 updates: list | None, layers: bool, scaler: Any = None, interval: Any = None,
                 suffix: str = ""):
        self.step, self.time, self.layers = step, time, layers
        self.grads, self.nonfinite, self.updates, self.scaler = grads, nonfinite, updates, scaler
        self.interval, self.suffix = interval, suffix  # suffix: of the totals, per optimizer (".opt1")
        n = sum(len(names) for names, _ in grads or [])
        u = sum(len(names) for names, _, _ in updates or [])  # upper bound
        self.count = ((n + 2 if grads else 0) + (2 * u + 1 if updates else 0) + (2 if scaler is not None else 0)
                      + (n + 4 if interval is not None else 0))

    def emit(self, builder: BatchBuilder) -> None:
        step, t = self.step, self.time
        scale = 1.0
        if self.scaler is not None:
            skipped, scale = self.scaler.emit(builder, step, t)
            if skipped:  # overflowed scaled gradients and an untouched model: the scaler's business, not a blow-up
                return
        sampled: dict[str, float] = {}  # this step's unscaled per-parameter norms, as read once here
        if self.grads:
            squares = 0.0
            for names, norms in self.grads:
                values = norms.tolist()  # the worker's read of this step's norms (one copy per device group)
                if scale != 1.0:
                    values = [v / scale for v in values]  # the unscaled gradients' norms
                for name, v in zip(names, values):
                    if name is None:  # another optimizer's parameter (SecondaryOptimizer)
                        continue
                    squares += v * v
                    sampled[name] = v
                    if self.layers:
                        builder.add_point(wire.GRAD_NORM + name, step, t, v)
            # same total as torch.nn.utils.clip_grad_norm_: the L2 norm of the per-parameter norms
            builder.add_point(wire.GRAD_NORM_TOTAL + self.suffix, step, t, math.sqrt(squares))
            if self.nonfinite is not None:
                bad = sum(to_float(n) for n in self.nonfinite)
                builder.add_point(wire.GRAD_NONFINITE + self.suffix, step, t, bad)
        if self.interval is not None:
            self._emit_interval(builder, step, t, sampled)
        if self.updates:
            ratios = []
            for names, before, delta in self.updates:
                for name, p, d in zip(names, before.tolist(), delta.tolist()):
                    if name is None:  # no gradient this step: the optimizer did not update it
                        continue
                    if self.layers:
                        builder.add_point(wire.PARAM_NORM + name, step, t, p)
                    if p == 0.0:
                        continue  # ratio undefined for an all-zero parameter (a fresh bias): not sent
                    ratio = d / p
                    ratios.append(ratio)
                    if self.layers:
                        builder.add_point(wire.UPDATE_RATIO + name, step, t, ratio)
            if ratios:
                worst = math.nan if any(r != r for r in ratios) else max(ratios)
                builder.add_point(wire.UPDATE_RATIO_MAX + self.suffix, step, t, worst)

    def _emit_interval(self, builder: BatchBuilder, step: int, t: float, sampled: dict[str, float]) -> None:
        """The interval's figures; already unscaled (``GradInterval.add`` divided each step by its scale)."""
        interval = self.interval
        builder.add_point(wire.GRAD_NORM_TOTAL_MAX, step, t, to_float(interval.total_max))
        builder.add_point(wire.GRAD_NORM_TOTAL_MEAN, step, t, to_float(interval.total_sum) / interval.steps)
        builder.add_point(wire.GRAD_NONFINITE_STEPS, step, t, to_float(interval.bad))
        builder.add_point(wire.GRAD_INTERVAL_STEPS, step, t, float(interval.steps))
        if self.layers:
            # only where the interval's largest norm stands out from the sampled step's own (by SPIKE_RATIO):
            # elsewhere grad_norm/<param> says as much, and the per-layer volume stays what it was
            for names, maxima in interval.maxima:
                for name, v in zip(names, maxima.tolist()):
                    last = sampled.get(name)
                    if last is None or not v <= SPIKE_RATIO * last:
                        builder.add_point(wire.GRAD_NORM_MAX + name, step, t, v)
