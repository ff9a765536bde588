"""Synthetic metric series and a small driver for rule tests (no database)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from txwatch.rules import Core, Transition, load_rules

T0 = 1_764_393_000.0  # a fixed start time: tests never read the clock
STEP_S = 0.5  # seconds per step in synthetic runs

Series = dict[str, list[tuple[int, float, float]]]


def points(values: Iterable[float], start: int = 1, every: int = 1, step_s: float = STEP_S) -> list[tuple[int, float, float]]:
    """[(step, time, value)] for ``values`` at steps start, start+every, ..."""
    return [(start + i * every, T0 + (start + i * every) * step_s, float(v)) for i, v in enumerate(values)]


def at(steps: Iterable[int], fn: Callable[[int], float], step_s: float = STEP_S) -> list[tuple[int, float, float]]:
    """[(step, time, fn(step))] at ``steps``: a sampled series (the hooks sample step 1, then every N)."""
    return [(s, T0 + s * step_s, float(fn(s))) for s in steps]


def curve(n: int, fn: Callable[[int], float], noise: float = 0.0, seed: int = 0) -> list[float]:
    """fn(step) for steps 1..n, times (1 + relative gaussian noise)."""
    rng = random.Random(seed)
    return [fn(s) * (1 + rng.gauss(0, noise)) if noise else fn(s) for s in range(1, n + 1)]


@dataclass
class Result:
    transitions: list[Transition]

    def fired(self, rule_id: str | None = None) -> list[Transition]:
        return [t for t in self.transitions if t.kind == "fire" and (rule_id is None or t.rule.id == rule_id)]

    def first_fire(self, rule_id: str) -> Transition | None:
        fires = self.fired(rule_id)
        return fires[0] if fires else None

    def ids(self, severities: tuple[str, ...] = ("info", "warning", "critical")) -> set[str]:
        return {t.rule.id for t in self.fired() if t.rule.severity in severities}

    def kinds(self, rule_id: str) -> list[str]:
        return [t.kind for t in self.transitions if t.rule.id == rule_id]


_BUILTIN = None


def builtin_rules():
    global _BUILTIN
    if _BUILTIN is None:
        _BUILTIN = load_rules([])
    return _BUILTIN


def run_rules(series: Series, events: list[dict] | None = None, rules=None, batch_steps: int = 10, settings=None,
              info: dict | None = None) -> Result:
    """Feed ``series`` to a fresh in-memory core in batches of ``batch_steps`` steps, then ``events``; ``info``
    (a run_info: parameter roles, layer order) goes with the first batch, as the collector passes it."""
    core = Core(rules if rules is not None else builtin_rules(), settings or {"stall_after_s": 300.0})
    state = core.new_state(1)
    out: list[Transition] = []
    if info is not None:
        out += core.process(state, {}, [{"kind": "info", "info": info}])
    steps = sorted({p[0] for pts in series.values() for p in pts})
    if steps:
        lo, hi = steps[0], steps[-1]
        start = lo
        while start <= hi:
            chunk = {n: [p for p in pts if start <= p[0] < start + batch_steps] for n, pts in series.items()}
            out += core.process(state, {n: p for n, p in chunk.items() if p}, [])
            start += batch_steps
    if events:
        out += core.process(state, {}, events)
    return Result(out)
