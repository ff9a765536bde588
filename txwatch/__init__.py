"""txwatch: watch PyTorch training jobs and say, early and in plain words, what is going wrong and why.

``txwatch.watch``, ``txwatch.Monitor`` and ``txwatch.preflight`` come from the training-side hooks
(``txwatch_hooks``). They are loaded on first use, so the CLI and the collector do not import torch.
``txwatch.Api`` reads the run history in a notebook (``txwatch.client``).
"""

from typing import Any

__all__ = ["Api", "ApiError", "Monitor", "preflight", "watch"]


def __getattr__(name: str) -> Any:
    if name in ("Api", "ApiError"):  # the history reader: no torch
        from txwatch import client

        return getattr(client, name)
    if name in __all__:
        import txwatch_hooks

        return getattr(txwatch_hooks, name)
    raise AttributeError(f"module 'txwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
