"""The condition language: grammar, syntax tree and static checks.

A condition is a small, declarative expression over a run's metric series, for example::

    median(loss, last=20) > 2 * running_min(median(loss, last=20))
    any_layer(max(grad_norm/*, points=5) == 0 and count(grad_norm/*, points=5) >= 5)

It is parsed with a Lark LALR grammar into the plain syntax tree below and checked before any rule runs: every
function is known, every argument has the right kind, every window is valid, and the whole condition is a
true/false test. Nothing in a rule file is ever handed to Python's ``eval``; there is no attribute access, no
subscript, no import and no way to name a Python object: the only names are series and the functions listed in
``FUNCTIONS``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from txwatch.rules.errors import ConditionError

GRAMMAR = r"""
start: expr

?expr: or_test
?or_test: and_test
        | or_test "or" and_test        -> or_
?and_test: not_test
         | and_test "and" not_test     -> and_
?not_test: "not" not_test              -> not_
         | comparison
?comparison: arith
           | arith COMP_OP arith       -> compare
?arith: term
      | arith ADD_OP term              -> binop
?term: factor
     | term MUL_OP factor              -> binop
?factor: "-" factor                    -> neg
       | "+" factor
       | atom
?atom: NUMBER                          -> number
     | DURATION                        -> duration
     | "true"                          -> true
     | "false"                         -> false
     | STRING                          -> string
     | IDENT "(" [arglist] ")"         -> call
     | IDENT                           -> series
     | "(" expr ")"
arglist: arg ("," arg)* ","?
?arg: expr
    | IDENT "=" expr                   -> kwarg

COMP_OP: ">=" | "<=" | "==" | "!=" | ">" | "<"
ADD_OP: "+" | "-"
MUL_OP: "*" | "/"
DURATION.3: /(\d+(\.\d*)?|\.\d+)(ms|s|m|h)(?![A-Za-z0-9_])/
NUMBER.2: /(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/
STRING: /"[^"\\\n]*"/ | /'[^'\\\n]*'/
// a series name: an identifier, optionally followed by /<rest> where rest may hold one * (the layer)
IDENT: /[A-Za-z_][A-Za-z0-9_]*(\/[A-Za-z0-9_.:\-\[\]*]+(\/[A-Za-z0-9_.:\-\[\]*]+)*)?/

%import common.WS
%ignore WS
"""

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
SERIES_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,99}(/[A-Za-z0-9_.:\-/\[\]*]{1,300})?$")

Kind = Literal["num", "bool", "str", "series"]


# ---------------------------------------------------------------- syntax tree


@dataclass(eq=False)
class Node:
    """A syntax tree node; ``start``/``end`` are 0-based offsets into the condition text."""

    start: int
    end: int
    text: str = field(default="", repr=False)


@dataclass(eq=False)
class Num(Node):
    value: float = 0.0
    seconds: bool = False  # written as a duration (30s, 5m): the value is in seconds


@dataclass(eq=False)
class Bool(Node):
    value: bool = False


@dataclass(eq=False)
class Str(Node):
    value: str = ""


@dataclass(eq=False)
class SeriesRef(Node):
    """A series name; ``*`` (at most one) stands for the layer being evaluated."""

    pattern: str = ""

    @property
    def wildcard(self) -> bool:
        return "*" in self.pattern


@dataclass(eq=False)
class Call(Node):
    name: str = ""
    args: list[Node] = field(default_factory=list)
    kwargs: dict[str, Node] = field(default_factory=dict)
    kwarg_pos: dict[str, int] = field(default_factory=dict)
    name_end: int = 0
    # filled by the checker
    window: Window | None = None
    series: SeriesRef | None = None  # for aggregates: the series read


@dataclass(eq=False)
class Unary(Node):
    op: str = "-"  # "-" or "not"
    operand: Node | None = None


@dataclass(eq=False)
class Binary(Node):
    op: str = "+"  # + - * /
    left: Node | None = None
    right: Node | None = None


@dataclass(eq=False)
class Compare(Node):
    op: str = ">"
    left: Node | None = None
    right: Node | None = None


@dataclass(eq=False)
class Logic(Node):
    op: str = "and"  # and | or
    items: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """Which points an aggregate reads.

    kind: ``all`` (the whole run so far, from running aggregates), ``steps`` (the last ``size`` steps of the
    series), ``seconds`` (the last ``size`` seconds), ``points`` (the last ``size`` points) or ``first`` (the
    first ``size`` steps: a baseline). ``shift`` moves a steps/seconds/points window back by that much.
    """

    kind: Literal["all", "steps", "seconds", "points", "first"] = "all"
    size: float = 0
    shift: float = 0

    def describe(self) -> str:
        unit = {"steps": " steps", "seconds": " s", "points": " points", "first": " steps"}.get(self.kind, "")
        if self.kind == "all":
            return "the whole run"
        base = f"first {self.size:g}{unit}" if self.kind == "first" else f"last {self.size:g}{unit}"
        return base + (f", {self.shift:g}{unit} back" if self.shift else "")


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
END_STATUSES = ("finished", "crashed", "oom")
SETTINGS_READABLE = ("stall_after_s",)


# ---------------------------------------------------------------- parsing


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


class _Build(Transformer):
    """Lark tree -> Node tree, keeping source offsets."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def _span(self, meta) -> tuple[int, int]:
        return meta.start_pos, meta.end_pos

    def _node(self, cls, meta, **kw):
        start, end = self._span(meta)
        return cls(start=start, end=end, text=_squash(self.source[start:end]), **kw)

    @v_args(meta=True)
    def start(self, meta, children):
        return children[0]

    @v_args(meta=True)
    def or_(self, meta, children):
        return self._logic("or", meta, children)

    @v_args(meta=True)
    def and_(self, meta, children):
        return self._logic("and", meta, children)

    def _logic(self, op, meta, children):
        items: list[Node] = []
        for c in children:  # flatten a or b or c into one node
            if isinstance(c, Logic) and c.op == op and not _parenthesized(self.source, c):
                items.extend(c.items)
            else:
                items.append(c)
        return self._node(Logic, meta, op=op, items=items)

    @v_args(meta=True)
    def not_(self, meta, children):
        return self._node(Unary, meta, op="not", operand=children[0])

    @v_args(meta=True)
    def neg(self, meta, children):
        return self._node(Unary, meta, op="-", operand=children[0])

    @v_args(meta=True)
    def compare(self, meta, children):
        left, op, right = children
        return self._node(Compare, meta, op=str(op), left=left, right=right)

    @v_args(meta=True)
    def binop(self, meta, children):
        left, op, right = children
        return self._node(Binary, meta, op=str(op), left=left, right=right)

    def number(self, children):
        tok: Token = children[0]
        return Num(start=tok.start_pos, end=tok.end_pos, text=str(tok), value=float(tok))

    def duration(self, children):
        tok: Token = children[0]
        m = re.match(r"^(.*?)(ms|s|m|h)$", str(tok))
        assert m is not None
        value = float(m.group(1)) * DURATION_UNITS[m.group(2)]
        return Num(start=tok.start_pos, end=tok.end_pos, text=str(tok), value=value, seconds=True)

    @v_args(meta=True)
    def true(self, meta, children):
        return self._node(Bool, meta, value=True)

    @v_args(meta=True)
    def false(self, meta, children):
        return self._node(Bool, meta, value=False)

    def string(self, children):
        tok: Token = children[0]
        return Str(start=tok.start_pos, end=tok.end_pos, text=str(tok), value=str(tok)[1:-1])

    def series(self, children):
        tok: Token = children[0]
        return SeriesRef(start=tok.start_pos, end=tok.end_pos, text=str(tok), pattern=str(tok))

    @v_args(meta=True)
    def call(self, meta, children):
        name_tok: Token = children[0]
        arglist = children[1] if len(children) > 1 else []
        args: list[Node] = []
        kwargs: dict[str, Node] = {}
        kwarg_pos: dict[str, int] = {}
        for a in arglist:
            if isinstance(a, tuple):
                key, value, pos = a
                if key in kwargs:
                    raise ConditionError(f"{key}= is given twice", column=pos + 1)
                kwargs[key] = value
                kwarg_pos[key] = pos
            else:
                if kwargs:
                    raise ConditionError("a positional argument cannot follow a keyword argument", column=a.start + 1)
                args.append(a)
        return self._node(
            Call, meta, name=str(name_tok), args=args, kwargs=kwargs, kwarg_pos=kwarg_pos, name_end=name_tok.end_pos
        )

    def arglist(self, children):
        return children

    def kwarg(self, children):
        key: Token = children[0]
        return (str(key), children[1], key.start_pos)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _parenthesized(source: str, node: Node) -> bool:
    return node.start > 0 and source[node.start - 1 : node.start] == "("


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def _describe_expected(expected: set[str]) -> str:
    names = {
        "RPAR": "')'",
        "LPAR": "'('",
        "COMMA": "','",
        "COMP_OP": "a comparison (>, <, ==, ...)",
        "NUMBER": "a number",
        "IDENT": "a name",
        "STRING": "a quoted string",
        "DURATION": "a duration",
        "ADD_OP": "'+' or '-'",
        "MUL_OP": "'*' or '/'",
        "AND": "'and'",
        "OR": "'or'",
        "EQUAL": "'='",
        "$END": "the end",
    }
    shown = sorted({names.get(e, e.lower()) for e in expected})
    if len(shown) > 6:
        return "an expression"
    return ", ".join(shown)


def parse(text: str) -> Node:
    """Parse a condition into a syntax tree (not yet checked). Raises ``ConditionError`` naming the column."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("the condition is empty: write a test such as  mean(loss, last=20) > 5")
    try:
        tree = _parser().parse(text)
        return _Build(text).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, ConditionError):
            raise exc.orig_exc from None
        raise
    except UnexpectedCharacters as exc:
        line, col = _line_col(text, exc.pos_in_stream)
        ch = text[exc.pos_in_stream]
        hint = ""
        if ch in ".[":
            hint = " (no attribute access or subscripts: name a series and aggregate it, e.g. last(loss))"
        elif ch == "=":
            hint = " (use == to compare)"
        raise ConditionError(f"unexpected character {ch!r}{hint}", line, col) from None
    except UnexpectedEOF as exc:
        line, col = _line_col(text, len(text.rstrip()))
        raise ConditionError(
            f"the condition ends too early: expected {_describe_expected(set(exc.expected))}", line, col
        ) from None
    except UnexpectedToken as exc:
        if exc.token.type == "$END":
            line, col = _line_col(text, len(text.rstrip()))
            raise ConditionError(
                f"the condition ends too early: expected {_describe_expected(set(exc.expected))}", line, col
            ) from None
        line, col = exc.line, exc.column
        hint = " (use == to compare)" if str(exc.token) == "=" else ""
        raise ConditionError(
            f"unexpected {exc.token!s:.30}{hint}: expected {_describe_expected(set(exc.expected))}", line, col
        ) from None
    except UnexpectedInput as exc:  # any other parse error: still located
        raise ConditionError(f"cannot parse the condition: {exc.__class__.__name__}", exc.line, exc.column) from None


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
        node.series = ref
        self.series.append(ref)
        return "num"

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


def children(node: Node) -> list[Node]:
    if isinstance(node, Unary):
        return [node.operand]
    if isinstance(node, (Binary, Compare)):
        return [node.left, node.right]
    if isinstance(node, Logic):
        return list(node.items)
    if isinstance(node, Call):
        return list(node.args) + list(node.kwargs.values())
    return []


def walk(node: Node):
    """Every node of the tree, depth first."""
    yield node
    for c in children(node):
        yield from walk(c)


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


def literal_value(node: Node) -> Any:
    """The value of a literal node (for showing thresholds), else None."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Unary) and node.op == "-" and isinstance(node.operand, Num):
        return -node.operand.value
    return None
