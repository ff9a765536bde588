"""A folder of recordings (``TXWATCH_BENCH_CACHE``), so that a change to the rules is scored without retraining.

A recording is reused only while everything that shapes it is unchanged: the key hashes the source of the
hooks (``hooks/txwatch_hooks``) and of the scenarios (``benchmarks/scenarios``, this folder), so a change to
capture or to a scenario trains again. Without the variable nothing is cached.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from benchmarks.scenarios.record import Recording, run_name
from benchmarks.scenarios.spec import Scenario

ROOT = Path(__file__).resolve().parents[2]
SHAPES = (ROOT / "hooks" / "txwatch_hooks", ROOT / "benchmarks" / "scenarios")


@functools.cache
def key() -> str:
    """A hash of the code that shapes recordings (``TXWATCH_BENCH_CACHE_KEY`` pins one, to score rule changes on
    the recordings of that key while the hooks are being edited)."""
    if os.environ.get("TXWATCH_BENCH_CACHE_KEY"):
        return os.environ["TXWATCH_BENCH_CACHE_KEY"]
    digest = hashlib.sha256()
    for folder in SHAPES:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _path(scenario: Scenario) -> Path | None:
    folder = os.environ.get("TXWATCH_BENCH_CACHE")
    if not folder:
        return None
    return Path(folder) / key() / f"{run_name(scenario)}.json.gz"


def load(scenario: Scenario) -> Recording | None:
    path = _path(scenario)
    if path is None or not path.exists():
        return None
    with gzip.open(path, "rt") as f:
        return Recording(**json.load(f))


def save(recording: Recording) -> None:
    from benchmarks.scenarios.registry import by_name

    path = _path(by_name()[recording.scenario])
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(asdict(recording), f)
    tmp.replace(path)
