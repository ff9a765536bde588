"""How a run ended, reported before the process goes: uncaught exceptions (sys.excepthook) and interpreter
exit (atexit). Out-of-memory errors are told apart from other crashes and carry the memory figures."""

from __future__ import annotations

import atexit
import sys
import threading
from typing import Any

import torch

_OOM_TYPES: tuple[type[BaseException], ...] = (MemoryError,)
for _name in ("OutOfMemoryError",):
    _cls = getattr(torch, _name, None) or getattr(torch.cuda, _name, None)
    if isinstance(_cls, type):
        _OOM_TYPES += (_cls,)
_cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None)
if isinstance(_cuda_oom, type) and _cuda_oom not in _OOM_TYPES:
    _OOM_TYPES += (_cuda_oom,)
# What an allocator says when it is a plain RuntimeError: "CUDA/MPS/XPU out of memory" (older torch, other
# backends) and the CPU allocator's "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes".
_OOM_MESSAGES = ("out of memory", "can't allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for torch.OutOfMemoryError / torch.cuda.OutOfMemoryError / MemoryError, also when wrapped
    (``raise X from oom``) or only said in the message (the CPU allocator, older torch, other backends)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, _OOM_TYPES):
            return True
        if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


# Strong references: ``txwatch.watch(model, opt)`` with the monitor not kept must still end its run at exit.
# close() unregisters, so a closed monitor is not held.
_monitors: set[Any] = set()
_lock = threading.Lock()
_installed = False
_previous_hook: Any = None


def register(monitor: Any) -> None:
    """Report ``monitor``'s end on an uncaught exception or at exit (installed once per process)."""
    global _installed, _previous_hook
    with _lock:
        _monitors.add(monitor)
        if not _installed:
            _installed = True
            _previous_hook = sys.excepthook
            sys.excepthook = _excepthook
            atexit.register(_at_exit)


def unregister(monitor: Any) -> None:
    with _lock:
        _monitors.discard(monitor)


def _live() -> list[Any]:
    with _lock:
        return list(_monitors)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    monitors = _live()
    for monitor in monitors:  # memory figures first: "at that moment", before anything else allocates
        monitor._note_crash(exc)
    previous = _previous_hook if _previous_hook is not None else sys.__excepthook__
    try:
        previous(exc_type, exc, tb)  # the traceback is printed before we spend time delivering
    finally:
        for monitor in monitors:
            monitor._end_at_exit()


def _at_exit() -> None:
    for monitor in _live():
        monitor._end_at_exit()
