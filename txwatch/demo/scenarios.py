"""The demo's runs: one healthy, and three with a classic fault each, trained under txwatch.watch()."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from txwatch.demo.data import SequenceSet, markov_chain, sample_sequences
from txwatch.demo.model import TinyGPT

VOCAB = 64
CONTEXT = 33  # 32 predicted tokens per sequence
# The demo trains its runs side by side in threads, and torch's default RNG is one per process: a model built
# while another run seeds or draws would get other weights on every machine. Building under this lock, and a
# generator of the run's own for the shuffle, make each run the same however the threads interleave.
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    expect: tuple[str, ...]  # rule ids this run should raise (empty: none, it is healthy)
    lr: float = 3e-3
    warmup: int = 30
    steps: int = 300
    train_size: int = 4096
    batch_size: int = 16
    dropout: float = 0.0
    clip: float | None = 1.0
    delay_s: float = 0.0
    workers: int = 0
    val_every: int = 25
    config: dict = field(default_factory=dict)


def scenarios(quick: bool = False) -> list[Scenario]:
    """The four demo runs. ``quick`` shortens them to a few seconds in all (used by the tests)."""
    s = 0.5 if quick else 1.0
    return [
        Scenario("healthy", "sane settings with warmup", expect=(), steps=int(300 * s)),
        Scenario(
            "lr-too-high", "learning rate 100x too high, no clipping",
            expect=("loss-diverging", "gradient-explosion", "loss-nonfinite"),
            lr=0.5, warmup=0, clip=None, steps=int(200 * s),
        ),
        Scenario(
            "overfit", "a 16-sequence training set, validated on fresh data",
            expect=("overfitting",), train_size=16, steps=int(500 * s) if quick else 600, val_every=20,
        ),
        Scenario(
            "slow-input", "a data loader that sleeps on every sample",
            expect=("slow-training",), steps=300 if not quick else 170, batch_size=8, delay_s=0.015 if not quick else 0.012,
        ),
    ]


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build(scenario: Scenario, seed: int = 0) -> tuple[TinyGPT, DataLoader, torch.Tensor]:
    """The scenario's model, training loader and validation sequences: the same for the same seed, whatever
    other threads do with torch's default generator meanwhile."""
    chain = markov_chain(VOCAB, seed=1234)
    train_set = SequenceSet(sample_sequences(chain, scenario.train_size, CONTEXT, seed=seed + 1), scenario.delay_s)
    val_seqs = sample_sequences(chain, 256, CONTEXT, seed=seed + 2)
    loader = DataLoader(train_set, batch_size=scenario.batch_size, shuffle=True, num_workers=scenario.workers,
                        drop_last=len(train_set) > scenario.batch_size,
                        generator=torch.Generator().manual_seed(seed + 3))
    with _INIT_LOCK:
        torch.manual_seed(seed)
        model = TinyGPT(VOCAB, context=CONTEXT - 1, dropout=scenario.dropout)
    return model, loader, val_seqs


def train(scenario: Scenario, *, run: str, project: str, seed: int = 0,
          on_step: Callable[[int, float], None] | None = None, **watch_kwargs) -> None:
    """Train one scenario under ``txwatch.watch``; ``on_step(step, loss)`` reports progress."""
    import txwatch

    model, loader, val_seqs = build(scenario, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=scenario.lr, weight_decay=0.0 if scenario.train_size < 100 else 0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(scenario.warmup, scenario.steps))
    config = {"lr": scenario.lr, "warmup_steps": scenario.warmup, "batch_size": scenario.batch_size,
              "train_size": scenario.train_size, "clip": scenario.clip, "scenario": scenario.name, **scenario.config}

    step = 0
    with txwatch.watch(model, optimizer, run=run, project=project, config=config, **watch_kwargs) as monitor:
        while step < scenario.steps:
            for batch in loader:
                model.train()
                loss = model(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if scenario.clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), scenario.clip)
                optimizer.step()
                schedule.step()
                step += 1
                monitor.log(loss=loss)
                if step % scenario.val_every == 0:
                    model.eval()
                    with torch.no_grad():
                        monitor.log(val_loss=model(val_seqs))
                if on_step is not None:
                    on_step(step, float(loss.detach()))
                if step >= scenario.steps:
                    break
