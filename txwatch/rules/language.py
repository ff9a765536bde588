"""The condition language: its functions and the static checks a condition passes before any rule runs.

A condition is a small, declarative expression over a run's metric series, for example::

    median(loss, last=20) > 2 * running_min(median(loss, last=20))
    any_layer(max(grad_norm/*, points=5) == 0 and count(grad_norm/*, points=5) >= 5)

It is parsed with a Lark LALR grammar into a plain syntax tree (``txwatch.rules.syntax``) and checked here: every
function is known, every argument has the right kind, every window is valid, and the whole condition is a
true/false test. Nothing in a rule file is ever handed to Python's ``eval``; there is no attribute access, no
subscript, no import and no way to name a Python object: the only names are series and the functions listed in
``FUNCTIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from txwatch.rules.errors import ConditionError
from txwatch.rules.syntax import (  # noqa: F401  (re-exported: the rest of the package imports them from here)
    SERIES_RE,
    Binary,
    Bool,
    Call,
    Compare,
    Kind,
    Logic,
    Node,
    Num,
    SeriesRef,
    Str,
    Unary,
    Window,
    _line_col,
    children,
    literal_value,
    parse,
    walk,
)

# ---------------------------------------------------------------- functions


@dataclass(frozen=True)
class FunctionSpec:
    """What a function takes and returns; ``group`` decides how it is checked and evaluated."""

    group: Literal["aggregate", "quantifier", "running", "scalar", "run"]
    returns: Kind
    args: tuple[Kind, ...] = ()  # positional kinds after the series (aggregates) or all (others)
    varargs: bool = False  # scalar least/greatest: two or more numbers
    doc: str = ""


_AGG = "aggregate"
FUNCTIONS: dict[str, FunctionSpec] = {
    # aggregates over one series and a window
    "mean": FunctionSpec(_AGG, "num", doc="mean of the finite values"),
    "median": FunctionSpec(_AGG, "num", doc="median of the finite values"),
    "min": FunctionSpec(_AGG, "num", doc="smallest finite value"),
    "max": FunctionSpec(_AGG, "num", doc="largest finite value"),
    "sum": FunctionSpec(_AGG, "num", doc="sum of the finite values"),
    "std": FunctionSpec(_AGG, "num", doc="standard deviation of the finite values"),
    "slope": FunctionSpec(_AGG, "num", doc="least-squares slope of value against step (per step)"),
    "noise": FunctionSpec(
        _AGG, "num", doc="typical step-to-step change in decades: median |log10(v[i]/v[i-1])| (needs a window)"),
    "trend": FunctionSpec(
        _AGG, "num", doc="Mann-Kendall trend as Kendall's tau against step: +1 rising throughout (needs a window)"),
    "percentile": FunctionSpec(_AGG, "num", args=("num",), doc="q-th percentile (0-100) of the finite values"),
    "nonfinite": FunctionSpec(_AGG, "num", doc="how many values are NaN or infinite"),
    "count": FunctionSpec(_AGG, "num", doc="how many points"),
    "last": FunctionSpec(_AGG, "num", doc="the latest value (NaN included)"),
    "first": FunctionSpec(_AGG, "num", doc="the earliest value (NaN included)"),
    # per-layer quantifiers: the body is evaluated once per layer, with * bound to it
    "any_layer": FunctionSpec("quantifier", "bool", args=("bool",), doc="true when the test holds for a layer"),
    "all_layers": FunctionSpec("quantifier", "bool", args=("bool",), doc="true when it holds for every layer"),
    "count_layers": FunctionSpec("quantifier", "num", args=("bool",), doc="how many layers it holds for"),
    "max_layers": FunctionSpec("quantifier", "num", args=("num",), doc="largest value over the layers"),
    "min_layers": FunctionSpec("quantifier", "num", args=("num",), doc="smallest value over the layers"),
    "median_layers": FunctionSpec("quantifier", "num", args=("num",), doc="median value over the layers"),
    "depth_corr": FunctionSpec(
        "quantifier", "num", args=("num",),
        doc="rank correlation of the value with the layer's depth (input side first; needs the hooks' roles)"),
    # baselines of an expression across evaluations
    "running_min": FunctionSpec(
        "running", "num", args=("num",), doc="lowest value the expression has had (since the start, or last=N steps)"
    ),
    "running_max": FunctionSpec(
        "running", "num", args=("num",), doc="highest value the expression has had (since the start, or last=N steps)"
    ),
    # plain arithmetic helpers
    "abs": FunctionSpec("scalar", "num", args=("num",), doc="absolute value"),
    "log10": FunctionSpec("scalar", "num", args=("num",), doc="base-10 logarithm (none for values <= 0)"),
    "positive": FunctionSpec(
        "scalar", "num", args=("num",), doc="the value when above 0, else no value (for a reason's [? ?] part)"),
    "least": FunctionSpec("scalar", "num", args=("num", "num"), varargs=True, doc="smallest argument"),
    "greatest": FunctionSpec("scalar", "num", args=("num", "num"), varargs=True, doc="largest argument"),
    # facts about the run
    "step": FunctionSpec("run", "num", doc="the step being evaluated"),
    "elapsed_s": FunctionSpec("run", "num", doc="seconds since the run's first point"),
    "idle_s": FunctionSpec("run", "num", doc="seconds since the run was last heard from (scheduler only)"),
    "running": FunctionSpec("run", "bool", doc="the run has not ended"),
    "ended": FunctionSpec("run", "bool", args=("str",), doc='the run ended with this status ("crashed", "oom")'),
    "setting": FunctionSpec("run", "num", args=("str",), doc="a collector setting (stall_after_s)"),
}
WINDOW_KWARGS = ("last", "points", "first", "shift", "prev")
WINDOW_ONLY = ("noise", "trend")  # aggregates of the points themselves, with no running whole-run form
END_STATUSES = ("finished", "crashed", "oom")
PARAM_KINDS = ("weight", "bias", "norm", "embedding", "other")  # the hooks' parameter roles (rules.roles)
SETTINGS_READABLE = ("stall_after_s",)


# ---------------------------------------------------------------- checking


@dataclass
class Checked:
    """A parsed and checked condition, with what it reads."""

    tree: Node
    text: str
    series: list[SeriesRef]  # every series read (patterns)
    time_based: bool  # uses idle_s(): evaluated by the scheduler, not on ingest
    reads_run: bool  # uses run facts (ended, running, ...)
    stateful: bool  # holds running_min/running_max


class _Checker:
    def __init__(self, text: str, layer_scope: bool):
        self.text = text
        self.layer_scope = layer_scope
        self.series: list[SeriesRef] = []
        self.time_based = False
        self.reads_run = False
        self.stateful = False

    def fail(self, node: Node | int, message: str):
        offset = node if isinstance(node, int) else node.start
        line, col = _line_col(self.text, offset)
        raise ConditionError(message, line, col)

    def check(self, node: Node, layer_bound: bool) -> Kind:
        if isinstance(node, Num):
            return "num"
        if isinstance(node, Bool):
            return "bool"
        if isinstance(node, Str):
            return "str"
        if isinstance(node, SeriesRef):
            self.fail(
                node,
                f"{node.pattern} is a series: aggregate it, e.g. last({node.pattern}) or mean({node.pattern}, last=20)",
            )
        if isinstance(node, Unary):
            kind = self.check(node.operand, layer_bound)
            want: Kind = "bool" if node.op == "not" else "num"
            if kind != want:
                self.fail(node.operand, f"'{node.op}' needs {_kind_name(want)}, got {_kind_name(kind)}")
            return want
        if isinstance(node, Binary):
            for side in (node.left, node.right):
                kind = self.check(side, layer_bound)
                if kind != "num":
                    self.fail(side, f"'{node.op}' needs numbers on both sides, got {_kind_name(kind)}")
            return "num"
        if isinstance(node, Compare):
            lk = self.check(node.left, layer_bound)
            rk = self.check(node.right, layer_bound)
            if node.op in ("==", "!=") and lk == rk == "bool":
                return "bool"
            for side, kind in ((node.left, lk), (node.right, rk)):
                if kind != "num":
                    self.fail(side, f"'{node.op}' compares numbers, got {_kind_name(kind)}")
            return "bool"
        if isinstance(node, Logic):
            for item in node.items:
                kind = self.check(item, layer_bound)
                if kind != "bool":
                    self.fail(item, f"'{node.op}' joins true/false tests, got {_kind_name(kind)}")
            return "bool"
        if isinstance(node, Call):
            return self.check_call(node, layer_bound)
        self.fail(node, "unsupported expression")  # pragma: no cover - the grammar produces nothing else
        raise AssertionError

    def check_call(self, node: Call, layer_bound: bool) -> Kind:
        spec = FUNCTIONS.get(node.name)
        if spec is None:
            close = _closest(node.name, FUNCTIONS)
            hint = f" (did you mean {close}?)" if close else ""
            if "/" in node.name:
                hint = " (a series name cannot be called; aggregate it, e.g. last(loss))"
            self.fail(node, f"unknown function {node.name}(){hint}")
        if spec.group == "aggregate":
            return self.check_aggregate(node, spec, layer_bound)
        if spec.group == "running" and node.kwargs:
            node.window = self.history_window(node)
        elif spec.group == "quantifier" and node.kwargs:
            self.kinds(node)
        elif node.kwargs:
            key = next(iter(node.kwargs))
            self.fail(node.kwarg_pos[key], f"{node.name}() takes no keyword arguments (got {key}=)")
        n_want = len(spec.args)
        if spec.varargs:
            if len(node.args) < n_want:
                self.fail(node, f"{node.name}() needs at least {n_want} arguments, got {len(node.args)}")
        elif node.name == "ended" and not node.args:
            pass  # ended() with no status: any end
        elif len(node.args) != n_want:
            self.fail(node, f"{node.name}() takes {n_want} argument{'s' if n_want != 1 else ''}, got {len(node.args)}")
        inner_bound = True if spec.group == "quantifier" else layer_bound
        for i, arg in enumerate(node.args):
            want = spec.args[min(i, n_want - 1)]
            kind = self.check(arg, inner_bound) if not isinstance(arg, Str) else "str"
            if kind != want:
                self.fail(arg, f"argument {i + 1} of {node.name}() must be {_kind_name(want)}, got {_kind_name(kind)}")
        if spec.group == "quantifier":
            if not _has_wildcard(node.args[0]):
                self.fail(
                    node,
                    f"{node.name}() iterates over layers: its test must read a per-layer series such as grad_norm/*",
                )
        elif spec.group == "running":
            self.stateful = True
        elif spec.group == "run":
            self.reads_run = True
            if node.name == "idle_s":
                self.time_based = True
            if node.name == "ended" and node.args:
                status = node.args[0]
                if not isinstance(status, Str) or status.value not in END_STATUSES:
                    self.fail(status, f"ended() takes one of {', '.join(map(repr, END_STATUSES))}")
            if node.name == "setting":
                name = node.args[0]
                if not isinstance(name, Str) or name.value not in SETTINGS_READABLE:
                    self.fail(name, f"setting() can read {', '.join(map(repr, SETTINGS_READABLE))}")
        return spec.returns

    def check_aggregate(self, node: Call, spec: FunctionSpec, layer_bound: bool) -> Kind:
        if not node.args:
            self.fail(node, f"{node.name}() needs a series first, e.g. {node.name}(loss, last=20)")
        target = node.args[0]
        if isinstance(target, Str):
            ref = SeriesRef(start=target.start, end=target.end, text=target.text, pattern=target.value)
        elif isinstance(target, SeriesRef):
            ref = target
        else:
            self.fail(target, f"the first argument of {node.name}() must be a series name, e.g. loss or grad_norm/*")
        if not SERIES_RE.match(ref.pattern) or ref.pattern.count("*") > 1:
            self.fail(ref, f"{ref.pattern!r} is not a valid series name (at most one * for the layer)")
        if ref.wildcard and not (layer_bound or self.layer_scope):
            self.fail(
                ref,
                f"{ref.pattern} names one series per layer: use it inside any_layer(...), all_layers(...), "
                "count_layers(...), max_layers(...) or in a rule with scope: layer",
            )
        extra = node.args[1:]
        if len(extra) != len(spec.args):
            self.fail(node, f"{node.name}() takes a series and {len(spec.args)} more argument(s), got {len(extra)}")
        for arg in extra:
            if not isinstance(arg, Num):
                self.fail(arg, f"{node.name}() needs a plain number here")
            if node.name == "percentile" and not 0 <= arg.value <= 100:
                self.fail(arg, "a percentile is between 0 and 100")
        node.window = self.window(node)
        if node.name in WINDOW_ONLY and node.window.kind == "all":
            self.fail(node, f"{node.name}() needs a window of recent points, e.g. {node.name}(val_loss, points=3)")
        node.series = ref
        self.series.append(ref)
        return "num"

    def kinds(self, node: Call) -> None:
        """A quantifier's kind="weight[,bias,norm,embedding,other]": judge only training parameters of those kinds."""
        for key, value in node.kwargs.items():
            if key != "kind":
                self.fail(node.kwarg_pos[key], f"{node.name}() takes kind=\"weight\" (parameter kinds), not {key}=")
            kinds = [k.strip() for k in value.value.split(",")] if isinstance(value, Str) else []
            if not kinds or any(k not in (*PARAM_KINDS, "any") for k in kinds):
                self.fail(value, f"kind= takes a quoted list of {', '.join(PARAM_KINDS)} or any, e.g. kind=\"weight\"")

    def history_window(self, node: Call) -> Window:
        """running_min/max(expr, last=N[, shift=K]): over the expression's values in the last N steps."""
        for key, value in node.kwargs.items():
            if key not in ("last", "shift"):
                self.fail(node.kwarg_pos[key], f"{node.name}() takes last=N steps and shift=K steps, not {key}=")
            if not isinstance(value, Num) or value.seconds or value.value != int(value.value) or value.value < 0:
                self.fail(value, f"{key}= counts whole steps here")
        if "last" not in node.kwargs:
            self.fail(node.kwarg_pos["shift"], "shift= moves a window: add last=")
        size = node.kwargs["last"].value  # type: ignore[attr-defined]
        if size <= 0:
            self.fail(node.kwargs["last"], "last= must be greater than zero")
        shift = node.kwargs["shift"].value if "shift" in node.kwargs else 0.0  # type: ignore[attr-defined]
        return Window("steps", float(size), float(shift))

    def window(self, node: Call) -> Window:
        kw = node.kwargs
        for key in kw:
            if key not in WINDOW_KWARGS:
                close = _closest(key, WINDOW_KWARGS)
                self.fail(
                    node.kwarg_pos[key],
                    f"unknown window {key}= (windows: last=N steps or last=30s, points=N, first=N, shift=, prev=)"
                    + (f"; did you mean {close}=?" if close else ""),
                )
            if not isinstance(kw[key], Num):
                self.fail(kw[key], f"{key}= takes a plain number or a duration such as 30s")
            if kw[key].value < 0:
                self.fail(kw[key], f"{key}= must not be negative")
        sizes = [k for k in ("last", "points", "first") if k in kw]
        if len(sizes) > 1:
            self.fail(node.kwarg_pos[sizes[1]], f"give one window size, not both {sizes[0]}= and {sizes[1]}=")
        if "shift" in kw and "prev" in kw:
            self.fail(node.kwarg_pos["prev"], "give shift= or prev=, not both")
        if not sizes:
            if "shift" in kw or "prev" in kw:
                key = "shift" if "shift" in kw else "prev"
                self.fail(node.kwarg_pos[key], f"{key}= moves a window: add last= or points=")
            return Window("all")
        key = sizes[0]
        size_node: Num = kw[key]  # type: ignore[assignment]
        if size_node.value <= 0:
            self.fail(size_node, f"{key}= must be greater than zero")
        if key == "last":
            kind = "seconds" if size_node.seconds else "steps"
        else:
            if size_node.seconds:
                self.fail(size_node, f"{key}= counts {'points' if key == 'points' else 'steps'}, not seconds")
            if size_node.value != int(size_node.value):
                self.fail(size_node, f"{key}= must be a whole number")
            kind = key
        if kind == "first" and ("shift" in kw or "prev" in kw):
            self.fail(node.kwarg_pos["shift" if "shift" in kw else "prev"], "first= is a fixed baseline: no shift")
        shift = 0.0
        if "prev" in kw:
            prev: Num = kw["prev"]  # type: ignore[assignment]
            if prev.seconds or prev.value != int(prev.value) or prev.value < 1:
                self.fail(prev, "prev= counts whole windows back: 1 is the window before this one")
            shift = prev.value * size_node.value
        elif "shift" in kw:
            sh: Num = kw["shift"]  # type: ignore[assignment]
            if sh.seconds != (kind == "seconds"):
                self.fail(sh, "shift= must be in the window's unit (seconds for last=30s, steps or points otherwise)")
            shift = sh.value
        return Window(kind, float(size_node.value), float(shift))


def _has_wildcard(node: Node) -> bool:
    """Whether the node reads a per-layer series directly (not inside a nested quantifier)."""
    if isinstance(node, SeriesRef):
        return node.wildcard
    if isinstance(node, Str):
        return "*" in node.value
    if isinstance(node, Call):
        spec = FUNCTIONS.get(node.name)
        if spec is not None and spec.group == "quantifier":
            return False
        return any(_has_wildcard(a) for a in node.args)
    return any(_has_wildcard(c) for c in children(node))


def _kind_name(kind: Kind) -> str:
    return {"num": "a number", "bool": "a true/false test", "str": "a quoted string", "series": "a series"}[kind]


def _closest(name: str, options) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.75)
    return match[0] if match else None


def check(text: str, *, layer_scope: bool = False, want: Kind = "bool") -> Checked:
    """Parse and check a condition. Raises ``ConditionError`` (with the column) when it is invalid.

    ``layer_scope``: the rule is evaluated once per layer, so per-layer series (``grad_norm/*``) may appear
    outside a quantifier. ``want``: ``bool`` for conditions, ``num`` for values shown in a reason.
    """
    tree = parse(text)
    checker = _Checker(text, layer_scope)
    kind = checker.check(tree, layer_bound=False)
    if kind != want:
        checker.fail(
            tree,
            f"a condition must be a true/false test such as  mean(loss, last=20) > 5, but this is {_kind_name(kind)}"
            if want == "bool"
            else f"expected {_kind_name(want)}, got {_kind_name(kind)}",
        )
    if layer_scope and not any(s.wildcard for s in checker.series):
        raise ConditionError("a rule with scope: layer must read a per-layer series such as grad_norm/*")
    return Checked(
        tree=tree,
        text=text,
        series=checker.series,
        time_based=checker.time_based,
        reads_run=checker.reads_run,
        stateful=checker.stateful,
    )
