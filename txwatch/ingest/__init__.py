"""Ingest: batches from the wire into the store and the rule engine.

``queue.Collector`` groups concurrent batches and writes them together (the daemon's HTTP route and embedded
mode both hand it batches); ``in_process.EmbeddedCollector`` is embedded mode's collector in the training
process.
"""
