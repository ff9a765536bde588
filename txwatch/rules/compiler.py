"""Evaluation of a checked condition: the syntax tree compiled into a tree of small Python closures.

No text is ever evaluated: each node becomes a closure over its children and the safe primitives of
``aggregates``. Values are numbers, booleans or ``None`` (no data yet); logic is three-valued (Kleene), so a
test over missing data is neither true nor false and never fires a rule, and ``not`` of "unknown" stays unknown.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from txwatch.rules.aggregates import aggregate
from txwatch.rules.language import (
    END_STATUSES,
    FUNCTIONS,
    Binary,
    Bool,
    Call,
    Checked,
    Compare,
    Logic,
    Node,
    Num,
    SeriesRef,
    Str,
    Unary,
    Window,
    children,
    walk,
)
from txwatch.rules.buffers import Needs, SeriesBuffer

Value = float | bool | None
Fn = Callable[["Context", "str | None"], Value]


@dataclass
class RunFacts:
    """What the engine knows about the run besides its series."""

    status: str = "running"  # running | finished | crashed | oom
    error: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    end_step: int | None = None
    start_time: float | None = None  # time of the first point or start event
    last_time: float | None = None  # latest point or event time
    idle_s: float | None = None  # seconds since last heard from; only set by the scheduler's check
    params: dict[str, list[Any]] | None = None  # parameter roles from run_info (``roles.from_info``)
    lr_peak: dict[str, float] = field(default_factory=dict)  # each lr/<group> series' highest value so far
    config: dict[str, Any] = field(default_factory=dict)  # the run's config, as the hooks sent it


class View(Protocol):
    """The window state a condition reads (a RunState provides it)."""

    facts: RunFacts

    def series(self, name: str) -> SeriesBuffer | None: ...

    def layer_keys(self, patterns: tuple[str, ...], kinds: frozenset[str] | None = None) -> list[str]: ...


@dataclass
class Explain:
    """Values seen while evaluating, to build the reason and the evidence."""

    values: dict[tuple[int, str | None], Value] = field(default_factory=dict)
    held: dict[int, list[str]] = field(default_factory=dict)  # quantifier node -> layers where the test held
    seen: dict[int, list[str]] = field(default_factory=dict)  # quantifier node -> layers evaluated


@dataclass(slots=True)
class Context:
    view: View
    step: int
    settings: dict[str, float]
    node_state: dict[str, float]  # running_min/max so far (read)
    updates: dict[str, float] = field(default_factory=dict)  # their new values (written)
    memo: dict[int, Value] = field(default_factory=dict)
    explain: Explain | None = None


def _bind(pattern: str, layer: str | None) -> str:
    return pattern.replace("*", layer) if layer is not None and "*" in pattern else pattern


def _is_nan(v: Value) -> bool:
    return isinstance(v, float) and v != v


_AGGREGATE_IDS: dict[tuple, int] = {}  # (aggregate, window, extra args) -> small int, shared by all rules

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class Compiler:
    """Turns a checked tree into closures and records what each series pattern needs."""

    def __init__(self, trace: bool = False) -> None:
        self.trace = trace  # record values for explanations (a second, slower set of closures)
        self.needs: dict[str, Needs] = {}
        self._stateful: dict[int, bool] = {}

    def has_state(self, node: Node) -> bool:
        key = id(node)
        if key not in self._stateful:
            own = isinstance(node, Call) and FUNCTIONS[node.name].group == "running"
            self._stateful[key] = own or any(self.has_state(c) for c in children(node))
        return self._stateful[key]

    def compile(self, node: Node) -> Fn:
        fn = self._compile(node)
        recorded = isinstance(node, (Call, Compare))
        if not recorded or not self.trace:
            return fn
        nid = id(node)

        def traced(ctx: Context, layer: str | None) -> Value:
            v = fn(ctx, layer)
            if ctx.explain is not None:
                ctx.explain.values[(nid, layer)] = v
            return v

        return traced

    def _compile(self, node: Node) -> Fn:
        if isinstance(node, Num):
            value = node.value
            return lambda ctx, layer: value
        if isinstance(node, Bool):
            b = node.value
            return lambda ctx, layer: b
        if isinstance(node, Unary):
            inner = self.compile(node.operand)
            if node.op == "not":
                return lambda ctx, layer: (None if (v := inner(ctx, layer)) is None else not v)
            return lambda ctx, layer: (None if (v := inner(ctx, layer)) is None else -v)
        if isinstance(node, Binary):
            return self._binary(node)
        if isinstance(node, Compare):
            return self._compare(node)
        if isinstance(node, Logic):
            return self._logic(node)
        if isinstance(node, Call):
            return self._call(node)
        raise TypeError(f"cannot evaluate {type(node).__name__}")  # pragma: no cover - the checker prevents it

    def _binary(self, node: Binary) -> Fn:
        left, right, op = self.compile(node.left), self.compile(node.right), node.op

        def fn(ctx: Context, layer: str | None) -> Value:
            a = left(ctx, layer)
            b = right(ctx, layer)
            if a is None or b is None:
                return None
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if b == 0:
                return None  # undefined, not infinite: a rule never fires on a division by zero
            return a / b

        return fn

    def _compare(self, node: Compare) -> Fn:
        left, right, cmp = self.compile(node.left), self.compile(node.right), _COMPARE[node.op]
        right_stateless = not self.has_state(node.right) and not self.trace

        def fn(ctx: Context, layer: str | None) -> Value:
            a = left(ctx, layer)
            if a is None and right_stateless:
                return None  # unknown whatever the right side is; it keeps no baseline that must see this step
            b = right(ctx, layer)
            if a is None or b is None or _is_nan(a) or _is_nan(b):
                return None
            return cmp(a, b)

        return fn

    def _logic(self, node: Logic) -> Fn:
        items = [self.compile(i) for i in node.items]
        # evaluation stops early only when no later item keeps a running baseline that must see every step
        stateful_after = [any(self.has_state(i) for i in node.items[k + 1 :]) for k in range(len(node.items))]
        # three-valued and/or: the deciding value (False for and, True for or) settles it; without one, any
        # unknown (None) item leaves the result unknown
        decisive = node.op != "and"

        def fn(ctx: Context, layer: str | None) -> Value:
            result: Value = not decisive
            for g, must_go_on in zip(items, stateful_after):
                v = g(ctx, layer)
                if v is decisive:
                    result = decisive
                    if not must_go_on and ctx.explain is None:
                        return decisive
                elif v is None and result is not decisive:
                    result = None
            return result

        return fn

    def _call(self, node: Call) -> Fn:
        spec = FUNCTIONS[node.name]
        if spec.group == "aggregate":
            return self._aggregate(node)
        if spec.group == "quantifier":
            return self._quantifier(node)
        if spec.group == "running":
            return self._running(node)
        if spec.group == "scalar":
            return self._scalar(node)
        return self._run_fact(node)

    def _aggregate(self, node: Call) -> Fn:
        ref: SeriesRef = node.series  # type: ignore[assignment]
        window: Window = node.window  # type: ignore[assignment]
        name = node.name
        extra = tuple(a.value for a in node.args[1:] if isinstance(a, Num))
        self.needs.setdefault(ref.pattern, Needs()).add_window(window, name)
        pattern = ref.pattern
        wildcard = "*" in pattern

        empty = 0.0 if name in ("count", "nonfinite") else None  # a series never sent has no points
        ident = _AGGREGATE_IDS.setdefault((name, window, extra), len(_AGGREGATE_IDS))  # a cheap cache key

        names: dict[str, str] = {}  # layer -> series name, so the name is built once per layer

        def fn(ctx: Context, layer: str | None) -> Value:
            if wildcard and layer is not None:
                series = names.get(layer)
                if series is None:
                    if len(names) > 100_000:  # layers of every run seen: bounded
                        names.clear()
                    series = names[layer] = pattern.replace("*", layer)
            else:
                series = pattern
            buf = ctx.view.series(series)
            if buf is None:
                return empty
            step = ctx.step
            if buf.steps and step >= buf.steps[-1]:  # as of now (not a late point): the buffer's own memo
                memo = buf.memo
                if ident in memo:
                    return memo[ident]
                value = memo[ident] = aggregate(name, buf, window, extra, step)
                return value
            return aggregate(name, buf, window, extra, step)

        return fn

    def _quantifier(self, node: Call) -> Fn:
        body = self.compile(node.args[0])
        patterns = tuple(sorted(set(_direct_wildcards(node.args[0]))))
        kinds = quantifier_kinds(node)
        name = node.name
        nid = id(node)
        # Across steps, the result only changes when a series it reads changes: unless the test keeps a
        # running baseline or reads run facts (step(), ...), reuse it while those series' families are unchanged.
        reads = tuple(sorted({c.series.pattern for c in walk(node) if isinstance(c, Call) and c.series is not None}))
        reusable = not self.has_state(node.args[0]) and not any(
            isinstance(c, Call) and FUNCTIONS[c.name].group == "run" for c in walk(node)
        )
        # The same test over the same layers (max_layers and median_layers of one expression, a rule and its
        # resolve condition, two rules) is one vector of values per step: computed by the first, then shared.
        shared_key = (node.args[0].text, kinds, patterns) if reusable and not self.trace else None

        def fn(ctx: Context, layer: str | None) -> Value:
            if nid in ctx.memo:  # the body binds its own layer, so the result does not depend on an outer one
                return ctx.memo[nid]
            view = ctx.view
            versions = None
            if reusable and ctx.explain is None and ctx.step >= getattr(view, "max_step", ctx.step + 1):
                versions = tuple(view.family_version.get(p, 0) for p in reads)
                kept = view.quantifier_memo.get(nid)
                if kept is not None and kept[0] == versions:
                    ctx.memo[nid] = kept[1]
                    return kept[1]
            keys = view.layer_keys(patterns, kinds)
            shared = getattr(view, "layer_values", None) if shared_key is not None and ctx.explain is None else None
            if shared is not None:
                if versions is None:
                    versions = tuple(view.family_version.get(p, 0) for p in reads)
                hit = shared.get(shared_key)
                # valid for the same step, the same points in the series read, and the same layer list
                if hit is not None and hit[0] == ctx.step and hit[1] == versions and hit[2] is keys:
                    values = hit[3]
                else:
                    values = [(k, body(ctx, k)) for k in keys]
                    shared[shared_key] = (ctx.step, versions, keys, values)
            else:
                values = [(k, body(ctx, k)) for k in keys]
            if name == "depth_corr":
                result = _depth_corr(values) if view.facts.params is not None else None
            else:
                result = _reduce(name, values)
            if versions is not None:
                view.quantifier_memo[nid] = (versions, result)
            if ctx.explain is not None:
                ctx.explain.seen[nid] = keys
                if name in ("max_layers", "min_layers") and result is not None:
                    ctx.explain.held[nid] = [k for k, v in values if v == result][:1]
                else:
                    ctx.explain.held[nid] = [k for k, v in values if v is True]
            ctx.memo[nid] = result
            return result

        return fn

    def _running(self, node: Call) -> Fn:
        inner = self.compile(node.args[0])
        pick = min if node.name == "running_min" else max
        text = node.text
        if node.window is not None:
            return self._running_window(node, inner, pick)

        def fn(ctx: Context, layer: str | None) -> Value:
            key = text if layer is None else f"{text}|{layer}"
            v = inner(ctx, layer)
            old = ctx.updates.get(key, ctx.node_state.get(key))
            if v is None or not math.isfinite(v):
                return old
            new = v if old is None else pick(old, v)
            ctx.updates[key] = new
            return new

        return fn

    def _running_window(self, node: Call, inner: Fn, pick) -> Fn:
        """The extreme of an expression over its values in a trailing (optionally shifted) window of steps.

        Keeps the expression's recent values (steps ``s`` and values ``v``, at most window + shift steps) in the
        node state. Recording a step is idempotent, so evaluating twice (to explain) changes nothing."""
        text = node.text
        size, shift = node.window.size, node.window.shift  # type: ignore[union-attr]
        span = size + shift

        def fn(ctx: Context, layer: str | None) -> Value:
            key = text if layer is None else f"{text}|{layer}"
            saved = ctx.updates.get(key) or ctx.node_state.get(key)
            step = ctx.step
            if saved is None:
                saved = {"first": step, "s": [], "v": []}
            steps, values = saved["s"], saved["v"]
            v = inner(ctx, layer)
            if v is not None and math.isfinite(v):
                if steps and steps[-1] >= step:
                    i = bisect_left(steps, step)
                    if i < len(steps) and steps[i] == step:
                        values[i] = v
                    else:
                        steps.insert(i, step)
                        values.insert(i, v)
                else:
                    steps.append(step)
                    values.append(v)
            cut = bisect_right(steps, step - span)
            if cut:
                del steps[:cut]
                del values[:cut]
            if step < saved["first"]:
                saved["first"] = step
            ctx.updates[key] = saved
            if saved["first"] > step - span + 1:
                return None  # the expression's history does not reach back over the whole window yet
            lo = bisect_right(steps, step - span)
            hi = bisect_right(steps, step - shift)
            return pick(values[lo:hi]) if hi > lo else None

        return fn

    def _scalar(self, node: Call) -> Fn:
        args = [self.compile(a) for a in node.args]
        name = node.name

        def fn(ctx: Context, layer: str | None) -> Value:
            vals = [a(ctx, layer) for a in args]
            if any(v is None for v in vals):
                return None
            if name == "abs":
                return abs(vals[0])
            if name == "log10":
                return math.log10(vals[0]) if vals[0] > 0 and math.isfinite(vals[0]) else None
            if name == "positive":
                return vals[0] if vals[0] > 0 else None
            if name == "least":
                return min(vals)
            return max(vals)

        return fn

    def _run_fact(self, node: Call) -> Fn:
        name = node.name
        arg = node.args[0].value if node.args and isinstance(node.args[0], Str) else None
        if name == "step":
            return lambda ctx, layer: float(ctx.step)
        if name == "running":
            return lambda ctx, layer: ctx.view.facts.status == "running"
        if name == "ended":
            if arg is None:
                return lambda ctx, layer: ctx.view.facts.status in END_STATUSES
            return lambda ctx, layer: ctx.view.facts.status == arg
        if name == "idle_s":
            return lambda ctx, layer: ctx.view.facts.idle_s
        if name == "elapsed_s":

            def elapsed(ctx: Context, layer: str | None) -> Value:
                f = ctx.view.facts
                if f.start_time is None or f.last_time is None:
                    return None
                return f.last_time - f.start_time

            return elapsed
        if name == "setting":
            return lambda ctx, layer: ctx.settings.get(arg)
        raise ValueError(f"unknown run function {name}")  # pragma: no cover - the checker prevents it


def _reduce(name: str, values: list[tuple[str, Value]]) -> Value:
    vals = [v for _, v in values]
    if name == "any_layer":  # over no layers at all: false (no layer shows it), so "or" alternatives work
        if any(v is True for v in vals):
            return True
        return None if any(v is None for v in vals) else False
    if name == "all_layers":
        if any(v is False for v in vals):
            return False
        return None if any(v is None for v in vals) or not vals else True
    if name == "count_layers":
        return float(sum(1 for v in vals if v is True))
    if name == "max_layers" or name == "min_layers":  # no sort: one pass, the same element sorted() would give
        best: Value = None
        for v in vals:
            if v is None or v != v:
                continue
            # sorted()[-1] is the last of equal largest values, sorted()[0] the first of equal smallest
            if best is None or (v >= best if name == "max_layers" else v < best):
                best = v
        return best
    nums = sorted(v for v in vals if v is not None and not _is_nan(v))
    if not nums:
        return None
    mid = len(nums) // 2  # median_layers
    return nums[mid] if len(nums) % 2 else (nums[mid - 1] + nums[mid]) / 2


def quantifier_kinds(node: Call) -> frozenset[str] | None:
    """The parameter kinds a quantifier judges (``kind="weight"``, ``kind="weight,embedding"``); None: all."""
    given = node.kwargs.get("kind")
    if not isinstance(given, Str):
        return None
    return frozenset(k.strip() for k in given.value.split(","))


def _depth_corr(values: list[tuple[str, Value]]) -> Value:
    """Spearman's rank correlation of the values with their layers' order (given input side first)."""
    vals = [float(v) for _, v in values if v is not None and not isinstance(v, bool) and math.isfinite(v)]
    if len(vals) < 3:
        return None
    n = len(vals)
    ranks = [0.0] * n
    order = sorted(range(n), key=vals.__getitem__)
    i = 0
    while i < n:  # ties share their mean rank
        j = i
        while j + 1 < n and vals[order[j + 1]] == vals[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    mean = (n - 1) / 2
    cov = sum((r - mean) * (k - mean) for k, r in enumerate(ranks))
    var_r = sum((r - mean) ** 2 for r in ranks)
    var_k = sum((k - mean) ** 2 for k in range(n))
    return cov / math.sqrt(var_r * var_k) if var_r > 0 else None


def _direct_wildcards(node: Node) -> Iterable[str]:
    """Per-layer series patterns a quantifier's body reads itself (not those of a nested quantifier)."""
    if isinstance(node, Call):
        spec = FUNCTIONS[node.name]
        if spec.group == "quantifier":
            return
        if spec.group == "aggregate" and node.series is not None and node.series.wildcard:
            yield node.series.pattern
            return
    for c in children(node):
        yield from _direct_wildcards(c)


@dataclass
class Program:
    """A compiled condition: call ``fn(ctx, layer)``."""

    checked: Checked
    fn: Fn
    needs: dict[str, Needs]
    layer_patterns: tuple[str, ...]  # for scope: layer, which series define the layers
    explain_fn: Fn | None = None  # the same, recording every value for the reason and evidence


def compile_condition(checked: Checked) -> Program:
    compiler = Compiler()
    fn = compiler.compile(checked.tree)
    return Program(
        checked=checked,
        fn=fn,
        needs=compiler.needs,
        layer_patterns=tuple(sorted(set(_direct_wildcards(checked.tree)))),
        explain_fn=Compiler(trace=True).compile(checked.tree),
    )
