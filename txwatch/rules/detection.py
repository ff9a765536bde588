"""Detection: a rule's condition applied to a run's window state, and the reason and evidence it leaves.

Pure: ``(window state, params) -> (fired, reason, evidence)``. The only state a condition keeps (the running
baselines of ``running_min``/``running_max``) is read from ``node_state`` and returned as ``updates`` for the
caller to apply, so evaluating twice (once fast, once to explain) gives the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from txwatch.rules.compiler import Context, Explain, Program, Value, View
from txwatch.rules.reasons import describe, fmt, quantifier_nodes, recorded_values
from txwatch.rules.model import Rule

MAX_EVIDENCE_LAYERS = 20  # evidence names at most this many layers (and says how many there were)


@dataclass
class Detection:
    """One evaluation of a rule: whether it held, in words and in figures."""

    fired: Value  # True, False or None (no data)
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, float] = field(default_factory=dict)


def evaluate(
    program: Program,
    view: View,
    step: int,
    settings: dict[str, float],
    node_state: dict[str, float],
    layer: str | None = None,
    explain: Explain | None = None,
) -> tuple[Value, dict[str, float]]:
    """The condition's value and the running-baseline updates it produced."""
    ctx = Context(
        view=view,
        step=step,
        settings=settings,
        node_state=node_state,
        explain=explain,
    )
    fn = program.explain_fn if explain is not None and program.explain_fn is not None else program.fn
    return fn(ctx, layer), ctx.updates


_NO_DATA = "\x00"  # a figure with no data yet, while the reason is assembled
_OPTIONAL = re.compile(r"\[\?(.*?)\?\]", re.S)


def optional_parts(text: str) -> str:
    """A reason template's ``[? ... ?]`` parts are said only when every figure in them has data: a run with no
    validation set is not told "validation loss no data"."""
    text = _OPTIONAL.sub(lambda m: "" if _NO_DATA in m.group(1) else m.group(1), text)
    return text.replace(_NO_DATA, "no data")


def detect(
    rule: Rule,
    view: View,
    step: int,
    settings: dict[str, float],
    node_state: dict[str, float],
    layer: str | None = None,
    explain: bool = True,
    program: Program | None = None,
) -> Detection:
    """Evaluate ``rule`` (or one of its programs) at ``step``; with ``explain``, also say why and show figures."""
    program = program or rule.program
    value, updates = evaluate(program, view, step, settings, node_state, layer)
    if not explain:
        return Detection(value, updates=updates)
    ex = Explain()
    evaluate(program, view, step, settings, node_state, layer, ex)
    evidence = build_evidence(rule, program, ex, view, step, layer)
    reason = render_reason(rule, program, ex, view, step, settings, {**node_state, **updates}, layer, evidence)
    return Detection(value, reason=reason, evidence=evidence, updates=updates)


def build_evidence(rule: Rule, program: Program, ex: Explain, view: View, step: int, layer: str | None) -> dict[str, Any]:
    tree = program.checked.tree
    ev: dict[str, Any] = {"step": step, "values": recorded_values(tree, layer, ex)}
    if layer is not None:
        ev["layer"] = layer
    held: list[str] = []
    for q in quantifier_nodes(tree):
        for k in ex.held.get(id(q), []):
            if k not in held:
                held.append(k)
    if held:
        shown = held[:MAX_EVIDENCE_LAYERS]
        ev["layers"] = shown
        ev["layer_count"] = len(held)
        per_layer: dict[str, dict[str, Value]] = {}
        for q in quantifier_nodes(tree):
            for k in ex.held.get(id(q), []):
                if k in shown:
                    per_layer.setdefault(k, {}).update(recorded_values(q.args[0], k, ex))
        ev["layer_values"] = per_layer
    if program.checked.reads_run:
        f = view.facts
        run: dict[str, Any] = {"status": f.status}
        if f.error:
            run["error"] = f.error
        if f.memory:
            run["memory"] = f.memory
        if f.end_step is not None:
            run["end_step"] = f.end_step
        if f.idle_s is not None:
            run["idle_s"] = round(f.idle_s, 1)
        ev["run"] = run
    return ev


def render_reason(
    rule: Rule,
    program: Program,
    ex: Explain,
    view: View,
    step: int,
    settings: dict[str, float],
    node_state: dict[str, float],
    layer: str | None,
    evidence: dict[str, Any],
) -> str:
    """One sentence: the rule's template filled in, or the tests that held with their values and thresholds."""
    if rule.template and program is rule.program:
        out: list[str] = []
        for part in rule.template:
            out.append(part.text if part.program is None and part.placeholder is None else "")
            if part.placeholder == "layer":
                out.append(layer or "")
            elif part.placeholder == "step":
                out.append(str(step))
            elif part.placeholder == "layers":
                layers = evidence.get("layers", [])
                text = ", ".join(layers[:5])
                if evidence.get("layer_count", 0) > 5:
                    text += f" and {evidence['layer_count'] - 5} more"
                out.append(text or "none")
            elif part.program is not None:
                v, _ = evaluate(part.program, view, step, settings, node_state, layer)
                out.append(_NO_DATA if v is None else fmt(v))
                evidence.setdefault("values", {}).setdefault(part.program.checked.text, v)  # the figures quoted
        return optional_parts("".join(out))
    parts = describe(program.checked.tree, layer, ex)
    text = "; ".join(parts) if parts else program.checked.text
    run = evidence.get("run", {})
    if run.get("error"):
        err = run["error"]
        text += f": {err.get('type', 'error')}: {str(err.get('message', ''))[:300]}"
    if layer is not None:
        text = f"layer {layer}: {text}"
    return text
