"""The composition root: the one package that imports every layer and wires the collector together.

``services`` builds the parts (store, ingest queue, rule engine, alerting), ``app`` the HTTP app (API and web
page), ``scheduler`` the background jobs, ``daemon`` the served collector (``txwatch serve``) and ``embedded``
the collector inside a training process (what ``txwatch_hooks`` opens when no endpoint is configured).
"""
