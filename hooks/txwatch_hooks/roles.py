"""Parameter roles: what each parameter is (weight, bias, norm, embedding), where it trains, what it shares.

Sent once in ``run_info`` (docs/design.md, "Wire format": ``params`` and ``param_groups``) so that rules can
tell a weight matrix from a bias or a norm scale, a frozen parameter from a dead one, and a param group at
lr 0 from a vanishing one. Kinds come from general properties, never from parameter names:

- ``embedding``: owned by an ``nn.Embedding``/``nn.EmbeddingBag``, or tied to such a weight (GPT-2's
  ``lm_head.weight`` is ``wte.weight``);
- ``norm``: owned by a normalization module: torch's LayerNorm, GroupNorm, RMSNorm, BatchNorm and
  InstanceNorm families, or a module class whose (or whose base's) name ends in ``Norm``, ``Norm1d``..
  (``LlamaRMSNorm``, ``T5LayerNorm``: model libraries write their own);
- ``weight``: two or more dimensions in a layer module (a leaf module, or a torch layer with children such as
  ``nn.MultiheadAttention``): a weight matrix, a conv kernel, an attention projection;
- ``bias``: at most one dimension in a module that also holds a ``weight``-kind parameter;
- ``other``: anything else (a bare ``nn.Parameter`` on a container module, a PReLU slope...).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from txwatch_hooks import wire
from txwatch_hooks.capture import layer_name, unwrap_optimizer

WEIGHT, BIAS, NORM, EMBEDDING, OTHER = "weight", "bias", "norm", "embedding", "other"
MAX_GROUPS = 1_000  # param groups described (a model with one group per parameter stays bounded)
MAX_ALIASES = 16  # tied names listed per parameter

_EMBEDDINGS = (torch.nn.Embedding, torch.nn.EmbeddingBag)
_NORMS = tuple(t for t in (
    torch.nn.LayerNorm, torch.nn.GroupNorm, getattr(torch.nn, "RMSNorm", None),
    torch.nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*, Lazy variants
) if t is not None)
_NORM_CLASS_NAME = re.compile(r"Norm(\d[dD])?$")
_LAYERS_WITH_CHILDREN = (torch.nn.MultiheadAttention, torch.nn.Transformer)


def describe(model: torch.nn.Module, optimizers: Sequence[Any] = ()) -> dict[str, list[dict[str, Any]]]:
    """``{"params": [...], "param_groups": [...]}`` for ``model`` and its optimizers (or their wrappers).

    One entry per distinct parameter tensor, in ``named_parameters()`` order, at most ``wire.MAX_LAYERS``;
    see docs/design.md for the fields. Parameters no optimizer holds have ``group`` None.
    """
    groups, group_of = _groups(optimizers)
    params = []
    for name, aliases, param, owners in itertools.islice(_distinct(model), wire.MAX_LAYERS):
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(param.shape),
            "numel": param.numel(),
            "kind": kind_of(param, owners),
            "group": group_of.get(id(param)),
            "requires_grad": bool(param.requires_grad),
        }
        if aliases:
            entry["aliases"] = aliases[:MAX_ALIASES]
        params.append(entry)
    return {"params": params, "param_groups": groups}


def kind_of(param: torch.Tensor, owners: list[torch.nn.Module]) -> str:
    """The kind of ``param`` from the modules that own it (several when tied) and its number of dimensions."""
    if any(isinstance(m, _EMBEDDINGS) for m in owners):
        return EMBEDDING
    owner = owners[0]
    if _is_norm(owner):
        return NORM
    if not _is_layer(owner):
        return OTHER
    if param.dim() >= 2:
        return WEIGHT
    if any(p.dim() >= 2 for p in owner.parameters(recurse=False)):
        return BIAS
    return OTHER


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, _NORMS) or any(_NORM_CLASS_NAME.search(c.__name__) for c in type(module).__mro__)


def _is_layer(module: torch.nn.Module) -> bool:
    """A module that computes with its own parameters: a leaf, or a torch layer that has sub-modules."""
    return isinstance(module, _LAYERS_WITH_CHILDREN) or next(module.children(), None) is None


def _distinct(model: torch.nn.Module):
    """(name, alias names, parameter, owning modules) per distinct tensor, in ``named_parameters()`` order."""
    found: dict[int, tuple[list[str], torch.Tensor, list[torch.nn.Module]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, param in module._parameters.items():
            if param is None:
                continue
            names, _, owners = found.setdefault(id(param), ([], param, []))
            full = layer_name(f"{module_name}.{local}" if module_name else local)
            if full not in names:
                names.append(full)
            if not any(o is module for o in owners):
                owners.append(module)
    # named_modules visits in the same order named_parameters does, so the first name is the series' name
    for names, param, owners in found.values():
        yield names[0], names[1:], param, owners


def _groups(optimizers: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """The param groups of every optimizer, numbered across them, and which group holds each parameter."""
    groups: list[dict[str, Any]] = []
    group_of: dict[int, int] = {}
    for o, optimizer in enumerate(unwrap_optimizer(each) for each in optimizers):
        for g, group in enumerate(optimizer.param_groups):
            if len(groups) >= MAX_GROUPS:
                return groups, group_of
            for p in group["params"]:
                group_of.setdefault(id(p), len(groups))
            groups.append({"index": len(groups), "optimizer": o, "optimizer_group": g,
                           "optimizer_class": type(optimizer).__name__, "lr": _number(group.get("lr")),
                           "weight_decay": _number(group.get("weight_decay")), "params": len(group["params"])})
    return groups, group_of


def _number(value: Any) -> float | None:
    """A JSON-safe float from a number or a one-element tensor (an LR may be a tensor); None otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()  # setup time, not the training loop: one read per group is fine
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class RunInfoUpdate:
    """A record that re-sends ``run_info`` with the next batch (its fields replacing the collector's)."""

    __slots__ = ("fields", "count")

    def __init__(self, fields: dict[str, Any]):
        self.fields = fields
        self.count = 1

    def emit(self, builder: wire.BatchBuilder) -> None:
        builder.run_info = {**(builder.run_info or {}), **self.fields}
