"""Learning-rate schedules the corpus uses, as ``torch.optim.lr_scheduler`` objects stepped once per step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0) -> LambdaLR:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``floor`` x the peak at ``total`` (and there after)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(opt, factor)


def warmup_linear(opt: torch.optim.Optimizer, warmup: int, total: int) -> LambdaLR:
    """Linear warmup, then linear decay to 0 at ``total`` (transformers' get_linear_schedule_with_warmup)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return LambdaLR(opt, factor)


def constant(opt: torch.optim.Optimizer) -> LambdaLR:
    return LambdaLR(opt, lambda _: 1.0)


def step_decay(opt: torch.optim.Optimizer, every: int, gamma: float = 0.1) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=every, gamma=gamma)


def restarts(opt: torch.optim.Optimizer, period: int, floor: float = 1e-4) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=period, eta_min=floor)


def set_peak(sched: torch.optim.lr_scheduler.LRScheduler, opt: torch.optim.Optimizer, factor: float) -> None:
    """Multiply the learning rate by ``factor`` from now on, whether or not a schedule drives it."""
    if sched is not None and hasattr(sched, "base_lrs"):
        sched.base_lrs = [lr * factor for lr in sched.base_lrs]
    for group in opt.param_groups:
        group["lr"] *= factor
