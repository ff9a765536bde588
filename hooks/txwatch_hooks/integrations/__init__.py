"""Framework integrations, each importing its framework only when imported itself:

- ``txwatch_hooks.integrations.lightning.TxwatchCallback`` (PyTorch Lightning)
- ``txwatch_hooks.integrations.huggingface.TxwatchCallback`` (transformers ``Trainer``)
"""
