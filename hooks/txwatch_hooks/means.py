"""The mean of what ``monitor.log()`` gets several times within one optimizer step (per micro-batch logging).

A name logged once per step is sent at once, as it always was. The first time a name comes a second time
within one step, it is averaged from then on: each step's values are summed on the device (tensors stay
un-read on the training thread), and when the step is complete (the next ``log()`` at another step, an
explicit ``step=``, ``flush()`` or ``close()``) its mean is sent together with ``<name>_count``, the number of
values averaged. The step on which the averaging starts is sent twice (its first value, then the mean); the
collector keeps the last value of a step, the mean.
"""

from __future__ import annotations

import logging
from typing import Any

from txwatch_hooks import wire
from txwatch_hooks.records import Points

log = logging.getLogger("txwatch_hooks")

COUNT_SUFFIX = "_count"


def count_name(name: str) -> str | None:
    """The companion series of an averaged ``name``: ``loss`` -> ``loss_count``, ``acc/top1`` -> ``acc_count/top1``."""
    base, sep, layer = name.partition("/")
    counted = f"{base[:100 - len(COUNT_SUFFIX)]}{COUNT_SUFFIX}{sep}{layer}"
    return counted if wire.is_metric_name(counted) else None


class StepMeans:
    """Sums and counts of the current step's values, per name; the averaged names' means when it completes."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.time = 0.0
        self.sums: dict[str, list[Any]] = {}  # name -> [sum (number or device tensor), count] at ``step``
        self.averaged: set[str] = set()  # names logged more than once within a step: sent when it completes
        self.dirty = False  # the current step has averaged values not sent yet
        self.announced = False

    def split(self, step: int, wall: float, values: dict[str, Any]) -> tuple[dict[str, Any], Points | None]:
        """Take ``values`` logged at ``step``: returns (what to send now, the completed earlier step's means)."""
        done = self.take() if step != self.step else None
        if step != self.step:
            self.step, self.sums = step, {}
        self.time = wall
        now = {}
        for name, value in values.items():
            if self._add(name, value):
                now[name] = value
        return now, done

    def take(self) -> Points | None:
        """The averaged names' means (and counts) at the current step, if any were logged since the last take."""
        if not self.dirty:
            return None
        self.dirty = False
        values: dict[str, Any] = {}
        for name in self.averaged:
            entry = self.sums.get(name)
            if entry is None:
                continue
            total, count = entry
            values[name] = total / count  # a tensor stays on its device: the worker reads it
            counted = count_name(name)
            if counted is not None:
                values[counted] = float(count)
        return Points(self.step, self.time, values) if values else None

    def _add(self, name: str, value: Any) -> bool:
        """Count ``value`` in; True when it is to be sent at once (a name not averaged, seen once this step)."""
        if hasattr(value, "float"):
            value = value.float()  # sums in fp32: bf16 losses lose digits when added up
        entry = self.sums.get(name)
        if entry is None:
            self.sums[name] = [value, 1]
        else:
            entry[0] = entry[0] + value  # out of place: the first value may still wait in the queue
            entry[1] += 1
            if name not in self.averaged:
                self.averaged.add(name)
                self._announce(name, entry[1])
        if name in self.averaged:
            self.dirty = True
            return False
        return True

    def _announce(self, name: str, count: int) -> None:
        if self.announced:
            return
        self.announced = True
        log.info("txwatch: %r was logged %d times at step %d (once per micro-batch?); from now on each step "
                 "stores the mean of its values, and their number as %r", name, count, self.step,
                 count_name(name))
