"""``txwatch.integrations.lightning.TxwatchCallback``: the hooks' PyTorch Lightning callback."""

from txwatch_hooks.integrations.lightning import TxwatchCallback

__all__ = ["TxwatchCallback"]
