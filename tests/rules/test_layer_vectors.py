"""Many layers: per-layer tests are evaluated once per step over the vector of layers, with the same outcome."""

from __future__ import annotations

import math
import random

from tests.rules.synth import points
from tests.rules.test_language import rule
from txwatch.rules import Core
from txwatch.rules.aggregates import WINDOWED, aggregate
from txwatch.rules.compiler import _reduce
from txwatch.rules.language import Window
from txwatch.rules.buffers import Needs, SeriesBuffer


def _layers(n: int, steps: int, seed: int = 0) -> dict[str, list]:
    rng = random.Random(seed)
    return {f"grad_norm/l{i}.weight": points([rng.choice([0.0, 1e-5, 0.5, 2.0, 40.0]) for _ in range(steps)])
            for i in range(n)}


def _fired(core: Core, series: dict) -> list:
    state = core.new_state(1)
    out = []
    for step in range(1, 1 + max(len(v) for v in series.values())):  # one step per batch: every step's result
        batch = {k: [p for p in v if p[0] == step] for k, v in series.items()}
        out += [(t.kind, t.rule.id, t.layer, t.step) for t in core.process(state, batch)]
    return out, state


def test_a_run_scoped_quantifier_rule_is_evaluated_once_per_step_however_many_layers(monkeypatch):
    r = rule("max_layers(median(grad_norm/*, points=3)) > 10")
    core = Core([r])
    calls = []
    inner = core._evaluate
    monkeypatch.setattr(core, "_evaluate", lambda *a: calls.append(a[3]) or inner(*a))
    core.process(core.new_state(1), _layers(50, 4))
    assert calls == [1, 2, 3, 4]  # not 50 per step


def test_quantifiers_over_one_body_share_its_values_and_decide_as_each_alone():
    body = 'log10(median(grad_norm/*, points=3))'
    texts = [f"max_layers({body}) - median_layers({body}) > 2", f"median_layers({body}) - min_layers({body}) > 2",
             f"count_layers({body} < -3) >= 2"]
    rules = []
    for i, text in enumerate(texts):
        r = rule(text)
        r.id = f"probe{i}"
        rules.append(r)
    series = _layers(30, 12, seed=3)
    together, state = _fired(Core(rules), series)
    alone = sorted(t for r in rules for t in _fired(Core([r]), series)[0])
    assert sorted(together) == alone and together
    # one vector of values per distinct body (the log10 one shared by four quantifiers in two rules)
    assert sorted(k[0] for k in state.layer_values) == [body, f"{body} < -3"]


def test_max_and_min_layers_pick_what_sorting_picked():
    rng = random.Random(1)
    pool = [0.0, -0.0, 1.0, -1.0, 2.5, math.inf, -math.inf, math.nan, None, True, False]
    for _ in range(2000):
        values = [(str(i), rng.choice(pool)) for i in range(rng.randint(0, 6))]
        nums = sorted(v for _, v in values if v is not None and v == v)
        for name, want in (("max_layers", nums[-1] if nums else None), ("min_layers", nums[0] if nums else None)):
            got = _reduce(name, values)
            assert got == want and type(got) is type(want) and math.copysign(1, got or 1) == math.copysign(1, want or 1)


def test_point_window_aggregates_read_the_same_values_as_select():
    rng = random.Random(2)
    for _ in range(300):
        size, shift = rng.randint(1, 6), rng.randint(0, 3)
        window = Window("points", size, shift)
        needs = Needs()
        needs.add_window(window, "median")
        buf = SeriesBuffer(needs)
        steps = sorted(rng.sample(range(1, 40), rng.randint(1, 15)))
        for s in steps:
            buf.add(s, float(s), rng.choice([0.0, 1.0, 2.0, 3.5, -1.0]))
        for name in ("mean", "median", "min", "max", "nonfinite"):
            for as_of in (None, steps[-1], steps[-1] + 5, rng.randint(0, 40)):
                picked = buf.select(window, as_of)
                if picked is None or (not picked[1] and name not in ("count", "nonfinite")):
                    want = None
                else:
                    want = WINDOWED[name](*picked, ())
                assert aggregate(name, buf, window, (), as_of) == want, (name, size, shift, steps, as_of)
