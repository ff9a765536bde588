"""Parameter roles as the rules see them: which layers a gradient or update rule should judge.

The hooks send each parameter's role once, in ``run_info`` (``params``: kind, param group, requires_grad;
``param_groups``: which optimizer each group belongs to). A quantifier that names kinds,
``any_layer(test, kind="weight")`` (``kind="any"``: every kind), then judges only the parameters of those kinds that train: not frozen
(``requires_grad`` false) and not in a param group whose learning rate has never been above 0 (an lr-0 group
is held fixed on purpose; a group warming up from 0 trains as soon as its rate rises). Without roles (older
hooks, a run imported from elsewhere) every layer is judged, as before roles existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from txwatch.rules.language import PARAM_KINDS as KINDS


def lr_series(group: Mapping[str, Any]) -> str:
    """The learning-rate series the hooks send for a param group (``lr/0``; ``lr/opt1.0`` past the first)."""
    optimizer = int(group.get("optimizer", 0) or 0)
    index = int(group.get("optimizer_group", group.get("index", 0)) or 0)
    return f"lr/{index}" if optimizer == 0 else f"lr/opt{optimizer}.{index}"


def from_info(info: Mapping[str, Any]) -> dict[str, list[Any]] | None:
    """``{param name: [kind, lr series or None, requires_grad, position]}`` from a run's info (None: none sent).

    ``position`` is the parameter's place in ``named_parameters()``, input side first. From older hooks, which
    send that order (``layers``) but no roles, the kind is None: every kind is judged.

    Tied aliases map to the same entry, so a series named after either name finds its role."""
    params = info.get("params")
    if not isinstance(params, list) or not params:
        layers = info.get("layers")  # older hooks: the parameters' order alone, with no kinds
        if not isinstance(layers, list) or not layers:
            return None
        return {name: [None, None, True, i] for i, name in enumerate(layers) if isinstance(name, str)} or None
    groups = {g.get("index"): lr_series(g) for g in info.get("param_groups") or [] if isinstance(g, Mapping)}
    out: dict[str, list[Any]] = {}
    for position, p in enumerate(params):
        if not isinstance(p, Mapping) or not isinstance(p.get("name"), str):
            continue
        entry = [p.get("kind") if p.get("kind") in KINDS else "other", groups.get(p.get("group")),
                 bool(p.get("requires_grad", True)), position]
        for name in [p["name"], *(a for a in p.get("aliases") or [] if isinstance(a, str))]:
            out[name] = entry
    return out or None


def position(params: Mapping[str, list[Any]] | None, param: str) -> float:
    """Where ``param`` sits in the model (input side first); unknown ones go last."""
    entry = params.get(param) if params is not None else None
    return float(entry[3]) if entry is not None and len(entry) > 3 else float("inf")


def judged(params: Mapping[str, list[Any]] | None, lr_peak: Mapping[str, float], param: str,
           kinds: frozenset[str]) -> bool:
    """Whether a rule restricted to ``kinds`` judges ``param``."""
    if params is None:
        return True
    entry = params.get(param)
    if entry is None:  # a name the roles do not list (a wrapper's prefix, a later parameter): judge it
        return True
    kind, lr, trains = entry[:3]
    if not trains or (kind is not None and kind not in kinds and "any" not in kinds):
        return False
    return lr is None or lr not in lr_peak or lr_peak[lr] > 0
