"""The watched model's forward passes, seen through hooks that never travel with the model.

txwatch needs to see each call of the model: its start ends the wait for data, its end (after an evaluation
batch) starts it again, and the Hugging Face callback reads the loss from its output. Hooks on the model are
the way to see that, but a module's hooks are part of its state: ``torch.save(model)``, ``copy.deepcopy``,
``AveragedModel``, ``pickle`` (DataLoader workers, multiprocessing) would take them along, and with them the
monitor's locks and threads (``TypeError: cannot pickle '_thread.lock' object``).

So the model also gets an instance ``__reduce_ex__`` (``PlainCopies``): pickling and copying (both go through
``__reduce_ex__``) reduce the model as its class would, then leave txwatch's hooks and this attribute out of
the state. A copy or an unpickled model is an ordinary model: unwatched, with no trace of txwatch, and nothing
in the pickle that needs txwatch to load. The original stays watched. ``close()`` removes all of it.

Each forward has a kind, and the listener decides what to count: ``TRAINING`` runs with autograd on;
``EVALUATION`` without (``no_grad``, ``inference_mode``); ``FOREIGN`` is torch tracing or exporting the model
(``torch.export``, ``torch.onnx.export``, ``torch.jit.trace``): not the job's computation at all. Inside a graph
that dynamo compiles (``torch.compile`` applied to the watched model, strict export) the hooks do nothing:
Python side effects there would be traced, not run.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import torch

from txwatch_hooks.guard import Guard

TRAINING, EVALUATION, FOREIGN = "training", "evaluation", "foreign"

# the per-module hook dictionaries whose entries a RemovableHandle's id keys
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_REDUCE = "__reduce_ex__"


class ForwardListener(Protocol):
    wants_forward_end: bool  # read at each forward's end: False skips the call (it costs on every step)

    def forward_started(self, module: torch.nn.Module, kind: str) -> None: ...

    def forward_ended(self, module: torch.nn.Module, kind: str, args: Any, kwargs: Any, output: Any) -> None: ...


def forward_kind() -> str:
    """What the forward running now is (see the module doc). ``torch.onnx.export`` traces through
    ``torch.export`` (is_exporting) or, the legacy exporter, ``torch.jit`` (is_tracing)."""
    compiler = torch.compiler
    if compiler.is_compiling() or compiler.is_exporting() or torch.jit.is_tracing():
        return FOREIGN
    return TRAINING if torch.is_grad_enabled() else EVALUATION


class PlainCopies:
    """A module's instance ``__reduce_ex__``: the module reduced as its class reduces it, less txwatch's hooks
    (by handle id) and less this attribute. One per module, shared by the monitors watching it."""

    def __init__(self, module: torch.nn.Module):
        self._module = weakref.ref(module)
        self.hook_ids: set[int] = set()

    @classmethod
    def of(cls, module: torch.nn.Module) -> PlainCopies:
        current = module.__dict__.get(_REDUCE)
        if isinstance(current, cls):
            return current
        plain = cls(module)
        object.__setattr__(module, _REDUCE, plain)
        return plain

    def release(self, ids: set[int]) -> None:
        self.hook_ids -= ids
        module = self._module()
        if not self.hook_ids and module is not None and module.__dict__.get(_REDUCE) is self:
            del module.__dict__[_REDUCE]

    def __call__(self, protocol: int) -> Any:
        module = self._module()
        if module is None:  # pragma: no cover - the attribute lives in the module's own __dict__
            raise TypeError("txwatch: the module this reduction belongs to is gone")
        reduced = type(module).__reduce_ex__(module, protocol)
        if not isinstance(reduced, tuple) or len(reduced) < 3 or not isinstance(reduced[2], dict):
            return reduced  # the class reduces itself its own way: leave it alone
        state = dict(reduced[2])
        state.pop(_REDUCE, None)
        for name in _HOOK_DICTS:
            hooks = state.get(name)
            if isinstance(hooks, dict) and not self.hook_ids.isdisjoint(hooks):
                state[name] = type(hooks)((k, v) for k, v in hooks.items() if k not in self.hook_ids)
        return (*reduced[:2], state, *reduced[3:])


class ForwardWatch:
    """Calls ``listener.forward_started`` / ``forward_ended`` around each call of ``model``.

    Holds the listener weakly: a forgotten monitor does not stay alive through the model's hooks.
    """

    def __init__(self, model: torch.nn.Module, listener: ForwardListener, guard: Guard):
        self._guard = guard
        self._listener = weakref.ref(listener)
        self._plain = PlainCopies.of(model)
        self._handles = [
            model.register_forward_pre_hook(self._on_start),
            model.register_forward_hook(self._on_end, with_kwargs=True, always_call=True),
        ]
        self._ids = {h.id for h in self._handles}
        self._plain.hook_ids |= self._ids

    def close(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._plain.release(self._ids)

    def _on_start(self, module: torch.nn.Module, args: Any) -> None:
        if torch.compiler.is_dynamo_compiling():  # being traced into a graph: nothing to do there
            return
        try:
            listener = self._listener()
            if listener is not None:
                listener.forward_started(module, forward_kind())
        except Exception as exc:  # never into the job's forward
            self._guard.fail("forward watch", exc, disable=False)

    def _on_end(self, module: torch.nn.Module, args: Any, *rest: Any) -> None:
        # (module, args, kwargs, output); (module, args, output) when the forward raised (always_call)
        if torch.compiler.is_dynamo_compiling():
            return
        try:
            listener = self._listener()
            if listener is not None and listener.wants_forward_end:  # the kind is the start's: the contexts that decide it wrap the call
                kwargs, output = (rest[0], rest[1]) if len(rest) == 2 else ({}, rest[-1] if rest else None)
                listener.forward_ended(module, forward_kind(), args, kwargs, output)
        except Exception as exc:
            self._guard.fail("forward watch", exc, disable=False)
