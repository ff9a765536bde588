"""``txwatch.integrations.huggingface.TxwatchCallback``: the hooks' transformers Trainer callback."""

from txwatch_hooks.integrations.huggingface import TxwatchCallback

__all__ = ["TxwatchCallback"]
