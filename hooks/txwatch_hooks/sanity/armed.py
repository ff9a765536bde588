"""``watch(..., preflight=True)``: preflight on the first training batch, seen by a one-shot forward pre-hook on
the watched model, before that batch trains. The hook is dropped from copies and pickles like txwatch's other
hooks (``txwatch_hooks.forwards.PlainCopies``), removes itself after its one call, and never raises into the
job's forward: without a loss from the model's output (``.loss`` of a transformers model given ``labels``, or a
scalar loss) and without a ``loss_fn``, it logs what to call instead."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from typing import Any

import torch

from txwatch_hooks.forwards import TRAINING, PlainCopies, forward_kind

log = logging.getLogger("txwatch_hooks")

ARGUMENTS = ("loss_fn", "steps", "scheduler", "max_steps", "config", "lr_steps")


def check_arguments(arguments: Mapping[str, Any]) -> None:
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        raise TypeError(f"preflight got an unexpected argument {unknown[0]!r}; it takes {', '.join(ARGUMENTS)}")
    loss_fn = arguments.get("loss_fn")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError("preflight's loss_fn must be callable as loss_fn(model, batch)")


def batch_of_call(args: tuple, kwargs: dict) -> Any:
    """The forward's inputs as a batch preflight can call the model with again (``state.loss_of``)."""
    if not args:
        return dict(kwargs)
    if len(args) == 1 and not kwargs:
        return args[0]
    return tuple(args) if not kwargs else None  # positional and keyword inputs together: not re-callable


class FirstBatch:
    """Runs ``preflight`` once, on the model's first training forward (the hooks of ``monitor``)."""

    def __init__(self, monitor: Any, model: torch.nn.Module, optimizer: Any, arguments: Mapping[str, Any]):
        self._monitor = weakref.ref(monitor)
        self._optimizer = optimizer
        self._arguments = dict(arguments)
        self._plain = PlainCopies.of(model)
        self._handle = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        self._plain.hook_ids |= {self._handle.id}

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._plain.release({self._handle.id})
            self._handle = None

    def _on_forward(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.compiler.is_dynamo_compiling():
            return
        monitor = self._monitor()
        if monitor is None or monitor.closed:
            self.remove()
            return
        if forward_kind() != TRAINING:
            return  # an evaluation or an export before training: wait for the first training batch
        self.remove()
        try:
            self._run(monitor, model, args, kwargs)
        except Exception as exc:  # never into the job's forward
            monitor._guard.fail("preflight", exc, disable=False)

    def _run(self, monitor: Any, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        from txwatch_hooks.sanity import preflight
        from txwatch_hooks.sanity.state import NoLoss

        batch = batch_of_call(args, kwargs)
        if self._optimizer is None or batch is None:
            log.warning("txwatch preflight: %s; call txwatch.preflight(model, optimizer, batch, loss_fn, run=monitor)",
                        "no optimizer is watched" if self._optimizer is None else
                        "the first forward takes positional and keyword inputs together")
            return
        try:
            with torch.enable_grad():
                preflight(model, self._optimizer, batch, run=monitor, **self._arguments)
        except NoLoss:
            log.warning("txwatch preflight: the model's first training forward gives no loss to train on (its "
                        "output has no .loss: no labels in its inputs?); call txwatch.preflight(model, optimizer, "
                        "batch, loss_fn, run=monitor) with the first batch instead, or pass "
                        "preflight={'loss_fn': ...}")
