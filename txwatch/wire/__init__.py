"""The wire: what the hooks send (``batch``) and how a batch that fails validation is explained (``problems``).

The bottom layer of the collector: it imports nothing of txwatch (``.importlinter``).
"""
