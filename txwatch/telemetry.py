"""The collector's own Prometheus registry. Components define their metrics here-on (one module each)
and the daemon's /metrics serves this registry."""

from prometheus_client import CollectorRegistry

REGISTRY = CollectorRegistry(auto_describe=True)
