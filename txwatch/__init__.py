"""txwatch: watch PyTorch training jobs and say, early and in plain words, what is going wrong and why.

``txwatch.watch``, ``txwatch.Monitor`` and ``txwatch.preflight`` come from the training-side hooks
(``txwatch_hooks``, the ``hooks`` extra). They are loaded on first use, so the CLI and the collector do not import
torch, and a collector installed without the extra says which one to install.
``txwatch.Api`` reads the run history in a notebook (``txwatch.client``).
"""

from types import ModuleType
from typing import Any

__all__ = ["Api", "ApiError", "Monitor", "preflight", "watch"]


def __getattr__(name: str) -> Any:
    if name in ("Api", "ApiError"):  # the history reader: no torch
        from txwatch import client

        return getattr(client, name)
    if name in __all__:
        return getattr(_hooks(), name)
    raise AttributeError(f"module 'txwatch' has no attribute {name!r}")


def _hooks() -> ModuleType:
    """The training-side hooks (``txwatch_hooks``); raises ModuleNotFoundError naming the extra when not installed."""
    try:
        import txwatch_hooks
    except ModuleNotFoundError as exc:
        if exc.name != "txwatch_hooks":
            raise  # the hooks are there but something they import is not: their own error says what
        raise ModuleNotFoundError(
            "txwatch.watch, Monitor, preflight and txwatch.integrations need the training-side hooks (torch), "
            "which the collector installs without: pip install 'txwatch[hooks]' "
            "(from a clone of the repository: pip install ./hooks '.[hooks]')",
            name="txwatch_hooks",
        ) from None
    return txwatch_hooks


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
