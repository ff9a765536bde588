"""Reasons and evidence: what a person reads about a diagnosis, built from the values seen while evaluating.

``describe`` turns the tests that held into sentences naming the metric, its value and the threshold, e.g.
``median(grad_norm_total, points=3) = 353.3 > 10 * median(grad_norm_total) = 36.69``.
"""

from __future__ import annotations

import math

from txwatch.rules.compiler import Explain, Value, _is_nan
from txwatch.rules.language import (
    FUNCTIONS,
    Binary,
    Bool,
    Call,
    Compare,
    Logic,
    Node,
    Num,
    Unary,
    children,
    literal_value,
)



def fmt(v: Value) -> str:
    """A number as a person reads it: 4 significant digits."""
    if v is None:
        return "no data"
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_nan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def describe(node: Node, layer: str | None, ex: Explain, limit_layers: int = 5) -> list[str]:
    """Sentences naming each test that held: the metric, its value and the threshold."""
    if isinstance(node, Compare):
        left = ex.values.get((id(node.left), layer))
        right = ex.values.get((id(node.right), layer))
        lv, rv = literal_value(node.left), literal_value(node.right)
        ltxt = node.left.text if lv is not None else f"{node.left.text} = {fmt(left)}"
        rtxt = node.right.text if rv is not None else f"{node.right.text} = {fmt(right)}"
        if left is None and lv is None:
            ltxt = f"{node.left.text} = {fmt(_value_of(node.left, layer, ex))}"
        if right is None and rv is None:
            rtxt = f"{node.right.text} = {fmt(_value_of(node.right, layer, ex))}"
        return [f"{ltxt} {node.op} {rtxt}"]
    if isinstance(node, Logic):
        held = [item for item in node.items if _truth(item, layer, ex) is True]
        findings = [item for item in held if not _is_guard(item)]
        out: list[str] = []
        for item in findings or held:  # "count(x) >= 10" and "step() >= 200" only say there was enough data
            out.extend(describe(item, layer, ex, limit_layers))
        return out
    if isinstance(node, Unary) and node.op == "not":
        return [f"not ({node.operand.text})"]
    if isinstance(node, Call):
        spec = FUNCTIONS[node.name]
        if spec.group == "quantifier":
            held = ex.held.get(id(node), [])
            if node.name in ("any_layer", "all_layers", "count_layers") and held:
                body = node.args[0]
                shown = held[:limit_layers]
                more = f"; and {len(held) - len(shown)} more" if len(held) > len(shown) else ""
                parts = [f"{k}: {', '.join(describe(body, k, ex, limit_layers)) or body.text}" for k in shown]
                return [f"in {'; '.join(parts)}{more}"]
            return [f"{node.text} = {fmt(ex.values.get((id(node), layer)))}"]
        if node.name == "ended":
            return ["the run ended with status " + (node.args[0].value if node.args else "ended")]
        return [f"{node.text} = {fmt(ex.values.get((id(node), layer)))}"]
    return [node.text]


_GUARD_FUNCTIONS = ("count", "step", "count_layers", "elapsed_s")


def _is_guard(node: Node) -> bool:
    """A test that only checks there is enough data (count(...) >= N, step() >= N), not a finding."""
    if not isinstance(node, Compare):
        return False
    sides = (node.left, node.right)
    has_literal = any(literal_value(s) is not None for s in sides)
    return has_literal and any(isinstance(s, Call) and s.name in _GUARD_FUNCTIONS for s in sides)


def _truth(node: Node, layer: str | None, ex: Explain) -> Value:
    if isinstance(node, (Call, Compare)):
        return ex.values.get((id(node), layer))
    if isinstance(node, Logic):
        vals = [_truth(i, layer, ex) for i in node.items]
        if node.op == "and":
            return False if False in vals else (None if None in vals else True)
        return True if True in vals else (None if None in vals else False)
    if isinstance(node, Unary) and node.op == "not":
        v = _truth(node.operand, layer, ex)
        return None if v is None else not v
    if isinstance(node, Bool):
        return node.value
    return None


def _value_of(node: Node, layer: str | None, ex: Explain) -> Value:
    """Best-effort value of an arithmetic node from recorded children (for the reason text)."""
    if isinstance(node, Num):
        return node.value
    if (id(node), layer) in ex.values:
        return ex.values[(id(node), layer)]
    if isinstance(node, Binary):
        a, b = _value_of(node.left, layer, ex), _value_of(node.right, layer, ex)
        if a is None or b is None:
            return None
        try:
            return {"+": a + b, "-": a - b, "*": a * b}.get(node.op) if node.op != "/" else (a / b if b else None)
        except TypeError:
            return None
    if isinstance(node, Unary) and node.op == "-":
        v = _value_of(node.operand, layer, ex)
        return -v if v is not None else None
    return None


def recorded_values(tree: Node, layer: str | None, ex: Explain) -> dict[str, Value]:
    """{expression text: value} for every aggregate and function seen at ``layer`` (not inside quantifiers)."""
    out: dict[str, Value] = {}

    def visit(node: Node) -> None:
        if isinstance(node, Call):
            key = (id(node), layer)
            if key in ex.values and FUNCTIONS[node.name].returns == "num":
                out[node.text] = ex.values[key]
            if FUNCTIONS[node.name].group == "quantifier":
                return
        for c in children(node):
            visit(c)

    visit(tree)
    return out


def quantifier_nodes(tree: Node) -> list[Call]:
    """The outermost quantifiers of a tree (those nested in another one describe its inner workings)."""
    out: list[Call] = []

    def visit(node: Node) -> None:
        if isinstance(node, Call) and FUNCTIONS[node.name].group == "quantifier":
            out.append(node)
            return
        for c in children(node):
            visit(c)

    visit(tree)
    return out
