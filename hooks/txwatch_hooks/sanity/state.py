"""What preflight must leave as it found it: the random number generators, and the model and optimizer,
which it never touches (it trains copies of them)."""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Mapping
from typing import Any

import torch

from txwatch_hooks.capture import unwrap_optimizer


class RandomState:
    """The state of every generator a training step may draw from: torch's CPU generator, each CUDA device's
    (only when CUDA is already initialized: preflight must not initialize it), Python's ``random`` and, when
    the job imported it, numpy's global one. ``restore()`` puts them back exactly."""

    def __init__(self) -> None:
        self.torch = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda = torch.cuda.get_rng_state_all() if cuda else None
        self.python = random.getstate()
        numpy = sys.modules.get("numpy")
        self.numpy = numpy.random.get_state() if numpy is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)


def copies(model: torch.nn.Module, optimizer: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Deep copies of the model and its optimizer, the optimizer stepping the copy's parameters (shared
    ``deepcopy`` memo: a parameter maps to its copy, ties included) with its state and param groups as they
    are. A watched model's copy is unwatched (``txwatch_hooks.forwards``), and an optimizer copy carries no
    step hooks, so nothing preflight does is counted as a training step."""
    memo: dict[int, Any] = {}
    model_copy = copy.deepcopy(model, memo)
    optimizer_copy = copy.deepcopy(unwrap_optimizer(optimizer), memo)
    for p in model_copy.parameters():
        p.grad = None  # the first backward's own gradients, not ones accumulated before preflight
    return model_copy, optimizer_copy


def configured_lrs(optimizer: Any, scheduler: Any = None) -> list[float]:
    """Each param group's learning rate as the job means to train at it: the scheduler's base (a warmup starts
    below it), else the group's ``initial_lr`` (set by a scheduler) or ``lr``."""
    base = getattr(scheduler, "base_lrs", None)
    if base:
        return [float(x) for x in base]
    return [float(g.get("initial_lr", g.get("lr", 0.0))) for g in unwrap_optimizer(optimizer).param_groups]


def set_lr(optimizer: torch.optim.Optimizer, lr: float, configured: list[float]) -> None:
    """The first group at ``lr``, the others kept in their configured proportion to it (a head at 10x, a
    frozen-at-0 group at 0)."""
    first = configured[0] if configured and configured[0] > 0 else None
    for i, group in enumerate(optimizer.param_groups):
        scaled = lr * configured[i] / first if first is not None and i < len(configured) else lr
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(scaled)
        else:
            group["lr"] = scaled


class NoLoss(ValueError):
    """The batch gives no loss: the model's output has none and no ``loss_fn`` was given."""


def loss_of(model: torch.nn.Module, batch: Any, loss_fn: Any = None) -> torch.Tensor:
    """The batch's loss: ``loss_fn(model, batch)``, else the model's output ``.loss`` (transformers), the
    model called with the batch as keywords (a dict), positional arguments (a tuple or list) or one input."""
    if loss_fn is not None:
        out = loss_fn(model, batch)
    elif isinstance(batch, Mapping):
        out = model(**batch)
    elif isinstance(batch, (tuple, list)):
        out = model(*batch)
    else:
        out = model(batch)
    loss = scalar_loss(out)
    if loss is None:
        raise NoLoss("preflight: no loss: the model's output has no .loss; pass loss_fn=lambda model, batch: ... "
                         "returning the batch's loss")
    return loss


def scalar_loss(out: Any) -> torch.Tensor | None:
    if isinstance(out, Mapping):
        out = out.get("loss")
    elif not isinstance(out, torch.Tensor):
        out = getattr(out, "loss", None)
    if isinstance(out, torch.Tensor) and out.numel() == 1 and out.requires_grad:
        return out.reshape(())
    return None


def batch_tensors(batch: Any) -> list[tuple[str, torch.Tensor]]:
    """The batch's tensors with a name each (``input_ids``, ``0``...), in order; nested one level deep."""
    if isinstance(batch, torch.Tensor):
        return [("input", batch)]
    if isinstance(batch, Mapping):
        items = [(str(k), v) for k, v in batch.items()]
    elif isinstance(batch, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(batch)]
    else:
        return []
    found = []
    for name, value in items:
        if isinstance(value, torch.Tensor):
            found.append((name, value))
        elif isinstance(value, (Mapping, tuple, list)):
            found.extend((f"{name}.{n}", t) for n, t in batch_tensors(value))
    return found
