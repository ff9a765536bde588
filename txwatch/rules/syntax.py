"""The condition language's syntax: a Lark grammar, the syntax tree it is turned into, and parse().

``parse`` only builds the tree (with each node's place in the text, for error columns and for quoting the
expression in a reason); ``txwatch.rules.language`` checks it.
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


def literal_value(node: Node) -> Any:
    """The value of a literal node (for showing thresholds), else None."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Unary) and node.op == "-" and isinstance(node.operand, Num):
        return -node.operand.value
    return None
