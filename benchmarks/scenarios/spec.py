"""What a scenario is: a training job to run (``Job``) and the ground truth it declares (``Scenario``).

A scenario's ``make(seed)`` builds a fresh ``Job`` (model, optimizers, schedules, data, loss, trainer knobs);
a trainer in ``benchmarks.scenarios.trainers`` runs it under txwatch. The ground truth is declared next to it:
healthy, or the fault with its onset step, the rule ids that name the primary cause, and the rule ids that
are genuinely secondary symptoms. Any other rule at warning or critical is a false alarm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.scenarios.data import Batch, LossFn

HEALTHY = "healthy"


@dataclass
class Job:
    """One training run, ready for a trainer.

    ``steps`` counts optimizer steps; each takes ``accumulate`` micro-batches from ``batches``. ``events``
    maps an optimizer step to a callable run right after that step (a fault or a planned change that
    starts mid-run: a learning-rate jump, a zeroed layer, unfreezing). ``go_dark_at``: from that step on,
    nothing the process sends reaches the collector (it was killed without a chance to report).
    """

    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    batches: Iterator[Batch]
    loss: LossFn
    steps: int
    schedulers: list[Any] = field(default_factory=list)
    val_batch: Batch | None = None
    val_every: int = 0  # 0: no validation
    accumulate: int = 1
    clip: float | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on the CPU; fp16 with a GradScaler)
    scaler: torch.amp.GradScaler | None = None  # fp16 only; default: a GradScaler("cpu") with its defaults
    events: dict[int, Callable[[], None]] = field(default_factory=dict)
    sched_per_micro: bool = False  # the bug: scheduler.step() called for every micro-batch
    log_micro: bool = False  # monitor.log(loss=...) for every micro-batch instead of once per step
    compile: bool = False  # torch.compile(model, backend="eager") before training (plain loop)
    manual_two: bool = False  # Lightning manual optimization stepping two optimizers
    go_dark_at: int | None = None
    stop_after_nonfinite: int = 30  # a user stops a run that has been NaN for a while (plain loop)


@dataclass(frozen=True)
class Scenario:
    """A job plus its ground truth.

    ``onset`` is the first optimizer step at which the fault is present (1 when it is there from the start;
    0 for a healthy run). A diagnosis of an expected rule counts from ``onset - 1`` on (the step a fault
    lands can be reported with the step before it); anything earlier was raised on a healthy run.
    ``shows`` checks, on the run's true per-step values (``benchmarks.scenarios.truth``), that the fault
    really shows; it returns a sentence with the figures, or raises ``AssertionError`` saying what is missing.
    """

    name: str
    fault: str  # HEALTHY or the fault's id, e.g. "lr-too-high/sgd-nan"
    arch: str
    trainer: str  # plain | lightning | hf
    seed: int
    make: Callable[[int], Job]
    onset: int = 0
    primary: tuple[str, ...] = ()
    secondary: tuple[str, ...] = ()
    shows: Callable[[Any], str] | None = None
    quick: bool = False  # in the --quick subset (seed 0 only)
    what: str = ""  # one line: the setup, and for a healthy run the trap it sets
    system: bool = False  # keep txwatch's system sampler on (the slow-input scenarios)

    @property
    def healthy(self) -> bool:
        return self.fault == HEALTHY

    @property
    def expected(self) -> frozenset[str]:
        return frozenset(self.primary) | frozenset(self.secondary)


def variants(label: str, arch: str, trainer: str, make: Callable[[int], Job], *, seeds: tuple[int, ...] = (0, 1),
             quick: bool = False, **truth: Any) -> list[Scenario]:
    """One scenario per seed, named ``label/arch/trainer/sSEED``; only seed 0 can be in the quick subset.
    ``label`` is the fault's id, or ``healthy.<trap>`` for a healthy run."""
    fault = HEALTHY if label.startswith(HEALTHY) else label
    return [Scenario(name=f"{label}/{arch}/{trainer}/s{seed}", fault=fault, arch=arch, trainer=trainer, seed=seed,
                     make=make, quick=quick and seed == seeds[0], **truth) for seed in seeds]
