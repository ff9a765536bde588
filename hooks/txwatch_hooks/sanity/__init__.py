"""Preflight: the practitioner's level-2 sanity checks before a long run, in one call.

    report = txwatch.preflight(model, optimizer, batch)                   # loss: model(**batch).loss
    report = txwatch.preflight(model, optimizer, (x, y), loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    print(report)                                                          # or rich.print(report)

Six checks on the batch, each with a verdict (pass, warn, fail), its figures and the fix in the guide's words:
``overfit`` (the loss drops 90% within ``steps`` steps on this one batch), ``gradient_flow`` (every trainable
parameter gets a finite, non-zero gradient; the share of ReLU units never active), ``shapes`` (each module's
output shape) and ``masking`` (padding visible through the attention mask), ``memory`` (the rule of thumb, the
measured peak of one step, the device's total and the largest batch that fits), ``learning_rate`` (an LR range
test, the configured rate, the guide's table) and ``schedule`` (the warmup against the planned steps).

Everything trains deep copies of the model and optimizer; the random generators (torch CPU and CUDA, Python,
numpy) are restored afterwards, so the job trains exactly as it would have without preflight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from txwatch_hooks.sanity.lr import family, lr_check, range_test, schedule_check
from txwatch_hooks.sanity.masking import masking_check
from txwatch_hooks.sanity.memory import dims, memory_check
from txwatch_hooks.sanity.report import FAIL, SKIPPED, WARN, Check, Report
from txwatch_hooks.sanity.state import RandomState, configured_lrs, copies, set_lr
from txwatch_hooks.sanity.trace import PeakMemory, first_step_and_overfit, gradient_check, overfit_check, shapes_check

__all__ = ["Check", "Report", "preflight"]

log = logging.getLogger("txwatch_hooks")

OVERFIT_STEPS = 50  # "a few dozen": a healthy setup memorizes one batch well within this
LR_STEPS = 100  # the range test's sweep: 8 decades in 100 steps, about 12 per decade
_PLANNED_KEYS = ("max_steps", "total_steps", "num_training_steps", "planned_steps", "steps")


def preflight(model: torch.nn.Module, optimizer: Any, batch: Any, loss_fn: Any = None, *, steps: int = OVERFIT_STEPS,
              run: Any = None, scheduler: Any = None, max_steps: int | None = None,
              config: Mapping[str, Any] | None = None, lr_steps: int = LR_STEPS) -> Report:
    """Run the preflight checks on one batch; returns the ``Report`` (``report.ok``: no check failed).

    Args:
        model, optimizer: the job's, left exactly as found (copies are trained).
        batch: one training batch, on the model's device.
        loss_fn: ``loss_fn(model, batch) -> loss``; default: the model called on the batch (a dict as
            keywords, a tuple as arguments), its output's ``.loss`` (transformers) or ``["loss"]``.
        steps: single-batch overfit steps.
        run: a ``Monitor`` (``watch()``'s): the report is stored with its run and failed checks become
            diagnoses; or a run name: a run holding only the report is created.
        scheduler: the LR scheduler, for the warmup check (without one: the config's ``warmup_steps``).
        max_steps: the planned optimizer steps (default: the config's ``max_steps``/``total_steps``...).
        config: the run's settings (default: the monitor's): ``model_family`` (bert, gpt, pretraining) picks
            the row of the guide's LR table; ``hidden_size``, ``num_layers``, ``seq_len`` the memory estimate's.
        lr_steps: the range test's steps (0 skips it).

    Raises ValueError when no loss can be had from the batch (pass ``loss_fn``), TypeError for a bad argument.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if steps < 2:
        raise ValueError("steps must be at least 2")
    config = dict(config if config is not None else getattr(run, "_run_info", {}).get("config") or {})
    started = time.perf_counter()
    device = _device(model)
    rng = RandomState()
    try:
        report = _checks(model, optimizer, batch, loss_fn, steps, scheduler, max_steps, config, lr_steps, device)
    finally:
        rng.restore()
    report.seconds = time.perf_counter() - started
    report.device = str(device)
    for check in report.checks:
        if check.verdict in (WARN, FAIL):
            log.warning("txwatch preflight: %s %s: %s", check.name, check.verdict, check.summary)
    if run is not None:
        _store(report, run, model)
    return report


def _checks(model: torch.nn.Module, optimizer: Any, batch: Any, loss_fn: Any, steps: int, scheduler: Any,
            max_steps: int | None, config: dict[str, Any], lr_steps: int, device: torch.device) -> Report:
    group_lrs = configured_lrs(optimizer, scheduler)
    lr = group_lrs[0] if group_lrs else None
    memory = PeakMemory(device)  # its baseline: what was in use before the copies
    try:
        model_a, optimizer_a = copies(model, optimizer)
        if lr is not None:
            set_lr(optimizer_a, lr, group_lrs)  # the rate it trains at, not a warmup's first
        try:
            masking = masking_check(model_a, batch, lambda m, b: m(**b))
        except Exception as exc:  # a model not called with the batch's keys: no verdict, not a finding
            masking = Check("masking", SKIPPED, f"the model could not be run on a changed batch "
                            f"({type(exc).__name__})")
        first = first_step_and_overfit(model_a, optimizer_a, batch, loss_fn, steps, memory)
        del model_a, optimizer_a
    finally:
        memory.stop()  # already stopped after the first step, unless something before it raised
    sweep: dict[str, Any] = {}
    if lr_steps > 0:
        model_b, optimizer_b = copies(model, optimizer)
        sweep = range_test(model_b, optimizer_b, batch, loss_fn, lr_steps, group_lrs)
        del model_b, optimizer_b
    row = family(model, config)
    planned = max_steps or next((config[k] for k in _PLANNED_KEYS if isinstance(config.get(k), int)), None)
    from txwatch_hooks.capture import unwrap_optimizer

    checks = [overfit_check(first, steps, lr, sweep.get("suggested")), gradient_check(first), shapes_check(first),
              masking, memory_check(model, batch, config, first.peak_bytes, device),
              lr_check(lr, sweep, row, dims(model, batch, config)["batch"][0]),
              schedule_check(unwrap_optimizer(optimizer), scheduler, planned, row, config)]
    return Report(checks)


def _store(report: Report, run: Any, model: torch.nn.Module) -> None:
    from txwatch_hooks.monitor import Monitor, watch

    if isinstance(run, Monitor):
        run._note_preflight(report)
        return
    if not isinstance(run, str):
        raise TypeError(f"run must be a Monitor (from watch()) or a run name, not {type(run).__name__}")
    with watch(model, run=run) as monitor:
        monitor._note_preflight(report)


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
