"""Run one scenario under txwatch and keep every batch the hooks sent (``txwatch_hooks.testing.MemorySender``).

txwatch's sampling is left at its defaults (``grad_every=10``, ``update_every=50``, ...), as a new user has
it; only the system sampler is off (no GPU here, and its CPU figures would make runs differ) except in the
scenarios about slow input, and the crash hooks are off (the worker process is not the job: the ``with
watch()`` block and the integrations report crashes themselves). The truth mode records the same run with
``grad_every=1, update_every=1``: every step's true values, nothing sampled.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from txwatch_hooks.testing import MemorySender

from benchmarks.scenarios import trainers
from benchmarks.scenarios.spec import Scenario

PROJECT = "diagnosis-benchmark"
EVERY_STEP = {"grad_every": 1, "update_every": 1}


class GoesDark(MemorySender):
    """A sender that, once ``dark`` is set, acknowledges batches and drops them: from the collector's side,
    the process vanished (kill -9, the kernel's OOM killer) without a word, mid-run."""

    def __init__(self) -> None:
        super().__init__()
        self.dark = False

    def send(self, batch: dict[str, Any], timeout_s: float) -> bool:
        if self.dark:
            self.calls += 1
            return True
        return super().send(batch, timeout_s)


@dataclass
class Recording:
    """What one run sent, in sequence order, and how the training itself ended."""

    scenario: str
    batches: list[dict[str, Any]]
    wall_s: float
    error: str | None = None  # the exception that ended the training, if any (crash scenarios)
    notes: list[str] = field(default_factory=list)


def run_name(scenario: Scenario) -> str:
    return scenario.name.replace("/", ".")


def record(scenario: Scenario, sampling: dict[str, Any] | None = None) -> Recording:
    """Train ``scenario`` once (seeded) under txwatch; ``sampling`` overrides txwatch's sampling knobs."""
    torch.set_num_threads(1)
    torch.manual_seed(scenario.seed)
    sink = GoesDark()
    started = time.perf_counter()
    error = None
    with tempfile.TemporaryDirectory(prefix="txwatch-bench-spool-") as spool:
        kwargs: dict[str, Any] = dict(run=run_name(scenario), project=PROJECT, sender=sink, crash_hooks=False,
                                      spool_dir=spool, config={"scenario": scenario.name, "seed": scenario.seed})
        if not scenario.system:
            kwargs["system_interval_s"] = 0
        kwargs.update(sampling or {})
        job = scenario.make(scenario.seed)
        if job.go_dark_at is not None:
            job.events[job.go_dark_at] = lambda: setattr(sink, "dark", True)
        try:
            trainers.run(job, scenario.trainer, kwargs)
        except Exception as exc:  # a crash scenario: the integration has reported it already
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            if scenario.fault not in ("crash", "out-of-memory"):
                error += "\n" + traceback.format_exc(limit=8)
    batches = sorted(sink.batches, key=lambda b: b["seq"])
    return Recording(scenario.name, batches, time.perf_counter() - started, error)
