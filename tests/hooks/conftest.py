"""Fixtures for the training-side hooks: a tiny model, an in-memory sink, quick transport settings."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from txwatch_hooks.testing import CollectorStandIn, MemorySender, free_port

# Quick batches and no background sampling, so tests see their points at once and stay deterministic.
FAST = {"schedule_delay_s": 0.02, "system_interval_s": 0, "crash_hooks": False, "close_timeout_s": 5.0}


class TinyNet(torch.nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 12):
        super().__init__()
        self.encoder = torch.nn.Linear(d_in, hidden)
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.encoder(x))))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def sink():
    return MemorySender()


@pytest.fixture
def stand_in():
    server = CollectorStandIn().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    """Every monitor a test opens must be closed: no txwatch thread may outlive its test."""
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("txwatch.") and thread.is_alive():
            thread.join(2.0)
    left = [t.name for t in threading.enumerate() if t.name.startswith("txwatch.") and t.is_alive()]
    assert not left, f"threads left running: {left}"


def batch_of(n: int = 8, d_in: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randn(n, 1, generator=g)


def points(sink: MemorySender, name: str) -> dict[int, float]:
    """step -> value of one series; fails if a step arrived twice."""
    pts = sink.series(name)
    steps = [s for s, _ in pts]
    assert len(steps) == len(set(steps)), f"{name}: a step was sent twice: {steps}"
    return dict(pts)


def start_ranks(script: Path, *args: str, world_size: int = 2) -> list[subprocess.Popen]:
    """``script`` as the ranks of one gloo job on this host (torchrun's environment, its own free port)."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        env.pop("TORCHELASTIC_RUN_ID", None)
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def wait_ranks(procs: list[subprocess.Popen], timeout_s: float = 240) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, err
