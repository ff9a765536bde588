"""A bounded quantile sketch: the running median (or any percentile) of a series since the run started.

Values go into logarithmic buckets (a DDSketch-style store): every quantile is within ``RELATIVE_ACCURACY`` of
an actual value, memory is bounded by ``MAX_BUCKETS`` per sign whatever the run's length, and the state is a
short list of integers that saves and restores exactly.
"""

from __future__ import annotations

import math
from typing import Any

RELATIVE_ACCURACY = 0.02  # 2%: far finer than any threshold a rule compares a median against
MAX_BUCKETS = 512  # per sign; 512 buckets at 2% cover ~17 decades before the lowest ones are merged
MIN_MAGNITUDE = 1e-30  # smaller magnitudes count as zero


class QuantileSketch:
    """Streaming quantiles of finite values with bounded memory."""

    __slots__ = ("_gamma_log", "pos", "neg", "zeros", "count", "_pos_keys", "_neg_keys")

    def __init__(self) -> None:
        gamma = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
        self._gamma_log = math.log(gamma)
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self._pos_keys: list[int] | None = None  # sorted bucket indexes, rebuilt only when a bucket is added
        self._neg_keys: list[int] | None = None

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.count += 1
        mag = abs(value)
        if mag < MIN_MAGNITUDE:
            self.zeros += 1
            return
        store = self.pos if value > 0 else self.neg
        idx = math.ceil(math.log(mag) / self._gamma_log)
        if idx in store:
            store[idx] += 1
            return
        store[idx] = 1
        if len(store) > MAX_BUCKETS:
            _collapse_lowest(store)
        if value > 0:
            self._pos_keys = None
        else:
            self._neg_keys = None

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), or None when nothing was added."""
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = 0
        # negative values, most negative first (largest magnitude bucket first)
        if self._neg_keys is None:
            self._neg_keys = sorted(self.neg, reverse=True)
        if self._pos_keys is None:
            self._pos_keys = sorted(self.pos)
        for idx in self._neg_keys:
            seen += self.neg[idx]
            if seen > rank:
                return -self._value(idx)
        seen += self.zeros
        if seen > rank:
            return 0.0
        for idx in self._pos_keys:
            seen += self.pos[idx]
            if seen > rank:
                return self._value(idx)
        return self._value(max(self.pos)) if self.pos else 0.0

    def _value(self, idx: int) -> float:
        # the bucket (gamma^(i-1), gamma^i] is represented by its midpoint in relative terms
        gamma = math.exp(self._gamma_log)
        return 2 * math.exp(idx * self._gamma_log) / (gamma + 1)

    def to_state(self) -> list[Any]:
        return [self.count, self.zeros, _flat(self.pos), _flat(self.neg)]

    @classmethod
    def from_state(cls, state: list[Any]) -> QuantileSketch:
        s = cls()
        s.count, s.zeros = int(state[0]), int(state[1])
        s.pos = _unflat(state[2])
        s.neg = _unflat(state[3])
        s._pos_keys = s._neg_keys = None
        return s


def _collapse_lowest(store: dict[int, int]) -> None:
    """Merge the two smallest-magnitude buckets: accuracy is lost only for the tiniest values."""
    lo, nxt = sorted(store)[:2]
    store[nxt] += store.pop(lo)


def _flat(store: dict[int, int]) -> list[int]:
    out: list[int] = []
    for k, v in store.items():
        out.extend((k, v))
    return out


def _unflat(flat: list[int]) -> dict[int, int]:
    return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
