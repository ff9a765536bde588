"""The learning rate and its schedule: an LR range test on a copy, the guide's table, and the warmup."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from txwatch_hooks.sanity.report import FAIL, PASS, SKIPPED, WARN, Check
from txwatch_hooks.sanity.state import loss_of, set_lr

LR_MIN, LR_MAX = 1e-7, 10.0  # the sweep's ends: below any useful rate, above any stable one
SMOOTHING = 0.9  # exponential smoothing of the sweep's losses (bias-corrected), as fastai's lr_find does
DIVERGED = 4.0  # the sweep stops when the smoothed loss is 4x its lowest
TOO_LOW, WARN_LOW = 100.0, 30.0  # below the steepest-fall rate by these factors: fail, warn
WARN_HIGH = 10.0  # above it by this: warn; at or past the rate where the loss bottomed out: fail
SCHEDULE_SIMULATION_STEPS = 20_000  # the warmup is at the start: simulate at most this many scheduler steps
# The guide's table (for batch sizes of 16-32; "scale LR ~linearly with batch size")
LR_TABLE = {"bert": ("BERT fine-tuning", 1e-5, 5e-5), "gpt": ("GPT fine-tuning", 2e-5, 1e-4),
            "pretraining": ("pre-training from scratch", 1e-4, 6e-4)}
_BERT = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta", "camembert"}
_GPT = {"gpt", "gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "opt", "bloom", "falcon", "qwen2", "phi"}


def range_test(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any, loss_fn: Any,
               steps: int, configured: list[float]) -> dict[str, Any]:
    """Exponential sweep of the first group's rate from LR_MIN to LR_MAX over ``steps`` steps on the batch
    (model and optimizer are copies; other groups keep their configured proportion to the first). The suggestion is where the loss falls fastest; ``lr_at_min_loss`` where it was lowest."""
    model.train()
    lrs, smoothed = [], []
    avg, best = 0.0, math.inf
    factor = (LR_MAX / LR_MIN) ** (1.0 / max(steps - 1, 1))
    for i in range(steps):
        lr = LR_MIN * factor**i
        set_lr(optimizer, lr, configured)
        loss = loss_of(model, batch, loss_fn)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        s = avg / (1 - SMOOTHING ** (i + 1))
        lrs.append(lr)
        smoothed.append(s)
        best = min(best, s)
        if s > DIVERGED * best:
            break
    if len(smoothed) < 5:
        return {"steps": len(smoothed)}
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    # the steepest fall of the smoothed loss per decade of LR, before its lowest point (fastai's "steep"):
    # on one batch the loss keeps falling at rates far too high for real data, so its minimum overshoots
    start = max(2, len(smoothed) // 10)  # the smoothing's first steps are too noisy to read a slope from
    decade = math.log10(factor)
    slopes = [((smoothed[i + 1] - smoothed[i - 1]) / (2 * decade), i) for i in range(start, max(low, start + 1))
              if i + 1 < len(smoothed)]
    steep = min(slopes)[1] if slopes else low
    return {"steps": len(smoothed), "lr_at_min_loss": lrs[low], "suggested": lrs[steep], "last_lr": lrs[-1]}


def family(model: torch.nn.Module, config: Mapping[str, Any]) -> str | None:
    """Which row of the guide's table: the config's ``model_family`` (bert, gpt, pretraining), else a
    transformers model's ``model_type``; ``pretraining``/``from_scratch`` true in the config picks that row."""
    if config.get("pretraining") or config.get("from_scratch"):
        return "pretraining"
    named = config.get("model_family") or getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(named, str):
        return None
    named = named.lower()
    if named in LR_TABLE:
        return named
    return "bert" if named in _BERT else "gpt" if named in _GPT else None


def lr_check(configured: float | None, sweep: dict[str, Any], row: str | None, batch_size: int) -> Check:
    figures: dict[str, Any] = {"configured": configured, "sweep steps": sweep.get("steps", 0)}
    suggested = sweep.get("suggested")
    causes, fix, verdict = [], [], PASS
    if suggested is not None:
        figures.update({"suggested": suggested, "loss lowest at": sweep["lr_at_min_loss"]})
    if row is not None:
        name, low, high = LR_TABLE[row]
        scale = max(batch_size / 32, 1.0)  # the table's rates are for batches of 16-32
        figures["guide"] = f"{name}: {low * scale:.2g}-{high * scale:.2g}" + (f" (x{scale:.3g} for batch {batch_size})"
                                                                                 if scale > 1 else "")
        if configured is not None and not low * scale / 2 <= configured <= high * scale * 2:
            verdict = WARN
            causes.append(f"outside the guide's range for {name} ({low * scale:.2g}-{high * scale:.2g})")
            fix.append("Pitfall 5, wrong learning rate scale: start from the guide's range, scaled linearly "
                       "with the batch size.")
    if configured is None or suggested is None:
        summary = "no learning rate to compare" if configured is None else "the range test found no minimum"
        return Check("learning_rate", verdict if row is not None and configured is not None else SKIPPED,
                     summary, figures, causes, fix)
    ratio = configured / suggested
    figures["configured / suggested"] = ratio
    if ratio > WARN_HIGH or configured >= sweep["lr_at_min_loss"]:
        verdict = FAIL if configured >= sweep["lr_at_min_loss"] else WARN
        causes.insert(0, f"learning rate too high: {configured:.3g} is {ratio:.3g}x the range test's suggestion")
        fix.insert(0, "Reduce the learning rate (3-10x lower) toward the suggestion; clip gradients to norm 1.0.")
    elif ratio < 1 / WARN_LOW:
        verdict = FAIL if ratio < 1 / TOO_LOW else WARN
        causes.insert(0, f"learning rate too low: {configured:.3g} is {1 / ratio:.3g}x below the range test's "
                      "suggestion")
        fix.insert(0, "Increase the learning rate 3-10x toward the suggestion.")
    summary = (f"configured {configured:.3g}, range test suggests {suggested:.3g}" +
               ("" if verdict == PASS else " — " + causes[0]))
    return Check("learning_rate", verdict, summary, figures, causes, fix)


def _simulated_lrs(optimizer: torch.optim.Optimizer, scheduler: Any, steps: int) -> list[float]:
    """The first group's learning rate over ``steps`` scheduler steps, on a copy of the scheduler that shares
    the parameters and optimizer state (only its param groups' numbers are copied)."""
    memo: dict[int, Any] = {id(p): p for g in optimizer.param_groups for p in g["params"]}
    memo[id(optimizer.state)] = optimizer.state
    sched = copy.deepcopy(scheduler, memo)
    lrs = [float(sched.optimizer.param_groups[0]["lr"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": there is no optimizer step
        for _ in range(steps):
            sched.step()
            lrs.append(float(sched.optimizer.param_groups[0]["lr"]))
    return lrs


def schedule_check(optimizer: torch.optim.Optimizer, scheduler: Any, planned: int | None, row: str | None,
                   config: Mapping[str, Any]) -> Check:
    figures: dict[str, Any] = {"planned steps": planned if planned else "unknown"}
    guide = ("10K-50K steps for pre-training" if row == "pretraining" else "5-10% of the steps for fine-tuning")
    fix = [f"Pitfall 4, insufficient warmup: warm up for {guide}, e.g. transformers.get_linear_schedule_with_warmup"
           " or torch.optim.lr_scheduler.LinearLR."]
    warmup: int | None = None
    if scheduler is not None:
        steps = min(planned or SCHEDULE_SIMULATION_STEPS, SCHEDULE_SIMULATION_STEPS)
        try:
            lrs = _simulated_lrs(optimizer, scheduler, steps)
        except Exception as exc:  # a scheduler that cannot be copied: say so rather than guess
            return Check("schedule", SKIPPED, f"the scheduler could not be simulated ({type(exc).__name__})", figures)
        peak = max(lrs)
        figures["scheduler"] = type(scheduler).__name__
        figures["first lr / peak"] = lrs[0] / peak if peak else 0.0
        warmup = next(i for i, x in enumerate(lrs) if x >= 0.999 * peak) if lrs[0] < 0.5 * peak else 0
    else:
        for key in ("warmup_steps", "num_warmup_steps"):
            if isinstance(config.get(key), int) and config[key] > 0:
                warmup = config[key]
        ratio = config.get("warmup_ratio")
        if warmup is None and isinstance(ratio, (int, float)) and ratio > 0 and planned:
            warmup = int(ratio * planned)
        figures["scheduler"] = "none" if warmup is None else "config"
    if not warmup:
        return Check("schedule", WARN, "no warmup: the learning rate is at its peak from the first step",
                     figures, ["no (or too short a) learning-rate warmup: the full rate hits fresh weights and "
                                "fresh optimizer statistics"], fix)
    figures["warmup steps"] = warmup
    if planned:
        share = warmup / planned
        figures["warmup share"] = share
        short = warmup < 10_000 if row == "pretraining" else share < 0.05
        if short:
            return Check("schedule", WARN, f"warmup of {warmup} steps is short ({share:.1%} of {planned})", figures,
                         [f"warmup shorter than the guide's {guide}"], fix)
        return Check("schedule", PASS, f"warmup of {warmup} steps ({share:.1%} of {planned})", figures)
    return Check("schedule", PASS, f"warmup of {warmup} steps (planned steps unknown)", figures)
