"""The run filter language of ``txwatch runs --where`` and ``GET /api/v1/runs?where=``.

    config.lr > 1e-3 and tags has 'sweep' and status == 'crashed'
    (status in ['crashed', 'stalled'] or last_loss > 2) and not name == 'baseline'

A comparison is ``FIELD OP VALUE``: OP one of ``== != > >= < <=``, ``has`` (a list holds the value; a text
contains it), ``in [V, ...]``; VALUE a number, a quoted text, true, false or null. Comparisons combine with
``and``, ``or``, ``not`` and parentheses. FIELD is a run column (``FIELDS``) or a path into the run's config
(``config.optimizer.lr``) or info (``info.world_size``). A run without the field, or with a value of another
type, does not match (``config.lr != 1`` does not match a run without ``lr`` either).

Parsed with Lark (as the rule language is) into a small tree and evaluated over each run's dict: nothing is
ever passed to ``eval``. The plain-column tests of an ``and`` at the top level are also applied in SQL
(``sql_conditions``), so the database narrows the rows before Python reads them. A bad filter raises
``FilterError``, one line naming the column (1-based) and what was expected.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

MAX_FILTER_CHARS = 2000

# The run's own fields (as ``queries.list_runs`` names them); config.* and info.* reach into the JSON.
FIELDS = ("name", "project", "status", "started", "ended", "last_seen", "duration_s", "steps", "host",
          "end_reason", "last_loss", "tags", "error.type", "error.message")
PREFIXES = ("config", "info")

GRAMMAR = r"""
start: expr
?expr: or_test
?or_test: and_test
        | or_test "or" and_test                -> or_
?and_test: not_test
         | and_test "and" not_test             -> and_
?not_test: "not" not_test                      -> not_
         | test
         | "(" expr ")"
test: FIELD COMP_OP value                      -> compare
    | FIELD "has" value                        -> has
    | FIELD "in" "[" value ("," value)* "]"    -> in_
?value: SIGNED_NUMBER                          -> number
      | STRING                                 -> string
      | "true"                                 -> true
      | "false"                                -> false
      | "null"                                 -> null

COMP_OP: ">=" | "<=" | "==" | "!=" | ">" | "<"
FIELD.0: /(?!(and|or|not|has|in|true|false|null)\b)[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*/
SIGNED_NUMBER.2: /[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/ | /[+-]?(inf|nan)\b/
STRING: /"[^"\\\n]*"/ | /'[^'\\\n]*'/

%import common.WS
%ignore WS
"""


class FilterError(ValueError):
    """A filter that cannot be parsed or names an unknown field; the message is one line."""


@dataclass(frozen=True)
class Test:
    field: str
    op: str  # == != > >= < <= has in
    value: Any  # a list for "in"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or | not
    args: tuple[Any, ...]


Node = Test | BoolOp


@v_args(inline=True)
class _Build(Transformer):
    def start(self, expr):
        return expr

    def or_(self, a, b):
        return BoolOp("or", (a, b))

    def and_(self, a, b):
        return BoolOp("and", (a, b))

    def not_(self, a):
        return BoolOp("not", (a,))

    def compare(self, field, op, value):
        return Test(_field(field), str(op), value)

    def has(self, field, value):
        return Test(_field(field), "has", value)

    def in_(self, field, *values):
        return Test(_field(field), "in", list(values))

    def number(self, tok):
        return float(tok)

    def string(self, tok):
        return str(tok)[1:-1]

    def true(self):
        return True

    def false(self):
        return False

    def null(self):
        return None


def _field(tok: Token) -> str:
    name = str(tok)
    head = name.split(".", 1)[0]
    if name in FIELDS or (head in PREFIXES and "." in name):
        return name
    col = (tok.column or 1)
    raise FilterError(
        f"unknown field {name!r} at column {col}; use one of {', '.join(FIELDS)}, or config.NAME / info.NAME"
    )


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True)


@functools.lru_cache(maxsize=256)
def parse(text: str) -> Node:
    """The filter's tree; raises ``FilterError`` naming the column of the mistake."""
    if not text or not text.strip():
        raise FilterError("empty filter; e.g. --where \"config.lr > 1e-3 and status == 'crashed'\"")
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"filter too long ({len(text)} characters, at most {MAX_FILTER_CHARS})")
    try:
        return _Build().transform(_parser().parse(text))
    except VisitError as exc:
        if isinstance(exc.orig_exc, FilterError):
            raise exc.orig_exc from None
        raise
    except UnexpectedCharacters as exc:
        raise FilterError(f"bad filter at column {exc.column}: unexpected {text[exc.pos_in_stream]!r}"
                          f"{_hint(text, exc.pos_in_stream)}") from None
    except UnexpectedEOF:
        raise FilterError(f"bad filter at column {len(text) + 1}: it ends too early (a comparison needs FIELD OP "
                          "VALUE)") from None
    except UnexpectedToken as exc:
        if exc.token.type == "$END":
            raise FilterError(f"bad filter at column {len(text) + 1}: it ends too early (a comparison needs "
                              "FIELD OP VALUE)") from None
        raise FilterError(f"bad filter at column {exc.column}: unexpected {str(exc.token)!r}; expected "
                          f"{_expected(exc.expected)}") from None
    except UnexpectedInput as exc:  # pragma: no cover - the three above are the kinds Lark raises
        raise FilterError(f"bad filter at column {getattr(exc, 'column', '?')}") from None


def _hint(text: str, pos: int) -> str:
    if text[pos] == "=" or text[pos:pos + 1] in ("&", "|"):
        return " (comparisons are == != > >= < <=; combine with and, or, not)"
    if text[pos] in "\"'":
        return " (a text needs its closing quote)"
    return ""


_NAMES = {"COMP_OP": "== != > >= < <=", "FIELD": "a field", "SIGNED_NUMBER": "a number", "STRING": "a quoted text",
          "HAS": "has", "IN": "in", "AND": "and", "OR": "or", "NOT": "not", "LPAR": "(", "RPAR": ")",
          "LSQB": "[", "RSQB": "]", "COMMA": ",", "TRUE": "true", "FALSE": "false", "NULL": "null"}


def _expected(names: set[str]) -> str:
    shown = sorted({_NAMES.get(n, n.lower()) for n in names})
    return ", ".join(shown[:8]) or "something else"


# -- evaluation ------------------------------------------------------------------------------------------


_MISSING = object()


def lookup(run: dict[str, Any], field: str) -> Any:
    """The value of ``field`` in a run dict (``queries.list_runs`` items carry config, info and tags)."""
    parts = field.split(".")
    value: Any = run
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return _MISSING
    return value


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _compare(left: Any, op: str, right: Any) -> bool:
    if op in ("==", "!="):
        ln, rn = _number(left), _number(right)
        equal = ln == rn if ln is not None and rn is not None else (type(left) is type(right) and left == right)
        return equal if op == "==" else not equal
    ln, rn = _number(left), _number(right)
    if ln is not None and rn is not None:
        if math.isnan(ln) or math.isnan(rn):
            return False
        a, b = ln, rn
    elif isinstance(left, str) and isinstance(right, str):
        a, b = left, right  # ISO times compare in time order
    else:
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def matches(node: Node, run: dict[str, Any]) -> bool:
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(matches(a, run) for a in node.args)
        if node.op == "or":
            return any(matches(a, run) for a in node.args)
        return not matches(node.args[0], run)
    value = lookup(run, node.field)
    if value is _MISSING:
        return False
    if node.op == "has":
        if isinstance(value, list):
            return any(_compare(item, "==", node.value) for item in value)
        return isinstance(value, str) and isinstance(node.value, str) and node.value in value
    if node.op == "in":
        return any(_compare(value, "==", v) for v in node.value)
    return _compare(value, node.op, node.value)


# -- the part the database can do -----------------------------------------------------------------------

SQL_FIELDS = ("name", "status", "project", "steps", "host", "end_reason")


def sql_tests(node: Node) -> list[Test]:
    """The tests on plain columns that every matching run must pass (those and-ed at the top level): the
    query applies them in SQL; the whole filter is still evaluated over the rows it returns."""
    if isinstance(node, BoolOp) and node.op == "and":
        return [t for a in node.args for t in sql_tests(a)]
    if isinstance(node, Test) and node.field in SQL_FIELDS and node.op in ("==", "in"):
        values = node.value if node.op == "in" else [node.value]
        numeric = node.field == "steps"
        if all((_number(v) is not None) if numeric else isinstance(v, str) for v in values):
            return [node]
    return []
