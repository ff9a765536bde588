"""Batches as the hooks send them (plain dicts, the wire format), for the collector, API and CLI tests."""

from __future__ import annotations

import json
import time

T0 = 1_764_393_000.0


def batch(run: str = "r", seq: int = 0, project: str = "p", rank: int = 0, series: dict | None = None,
          events: list | None = None, **extra) -> dict:
    b = {"schema_version": 1, "run": run, "project": project, "seq": seq, "rank": rank, "sent_at": time.time(),
         "series": series or {}, "events": events or []}
    b.update(extra)
    return b


def steps(name: str, start: int, stop: int, value=lambda s: 1.0 / (s + 1)) -> dict:
    return {name: [[s, T0 + s, value(s)] for s in range(start, stop)]}


def dumps(b: dict) -> bytes:
    return json.dumps(b).encode()  # Python's json: NaN and Infinity literals, as the hooks send them
