"""The first step on a copy, seen closely (each module's output shape, which ReLU units fire, which parameters
get a gradient, the memory it takes), then the single-batch overfit: the same batch again for N steps."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from txwatch_hooks.sanity.report import FAIL, PASS, WARN, Check
from txwatch_hooks.sanity.state import loss_of

RELU_FAMILY = (torch.nn.ReLU, torch.nn.ReLU6)  # units that can die: zero output and zero gradient below 0
OVERFIT_DROP = 0.9  # the guide: one batch "should reach near-zero loss"; here, 90% below where it started
OVERFIT_STILL_FALLING = 0.5  # half-way there: a slow start (small LR, long warmup), not a bug, in N steps
DEAD_WARN, DEAD_FAIL = 0.05, 0.5  # random init leaves ~0% of units silent on a whole batch: 5% is telling
RSS_POLL_S = 0.0005  # the CPU peak: RSS polled every 0.5 ms during the step (plus VmHWM when it rose)


@dataclass
class FirstStep:
    shapes: list[dict[str, Any]] = field(default_factory=list)
    units: int = 0
    dead: dict[str, tuple[int, int]] = field(default_factory=dict)  # module -> (dead units, units)
    no_grad: list[str] = field(default_factory=list)
    zero_grad: list[str] = field(default_factory=list)
    nonfinite_grad: list[str] = field(default_factory=list)
    trainable: int = 0
    losses: list[float] = field(default_factory=list)
    peak_bytes: float | None = None  # measured: the step's peak over what was in use before the copy
    frozen: bool = False


def _shape_of(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return "x".join(str(d) for d in out.shape) or "scalar"
    if isinstance(out, Mapping):
        for key in ("logits", "last_hidden_state", "loss"):
            if isinstance(out.get(key), torch.Tensor):
                return f"{key} {_shape_of(out[key])}"
        return "-"
    if isinstance(out, Sequence) and not isinstance(out, str) and out:
        return ", ".join(_shape_of(o) for o in out[:3]) + (", ..." if len(out) > 3 else "")
    logits = getattr(out, "logits", None)
    return f"logits {_shape_of(logits)}" if isinstance(logits, torch.Tensor) else "-"


class _Recorder:
    """Forward hooks on every module of the copy for its first forward only."""

    def __init__(self, model: torch.nn.Module, first: FirstStep):
        self.first, self.seen = first, set()
        self.handles = [m.register_forward_hook(self._hook(name or type(model).__name__))
                        for name, m in model.named_modules()]

    def _hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
            if name in self.seen:  # a module called twice (a shared block): its first call
                return
            self.seen.add(name)
            params = sum(p.numel() for p in module.parameters(recurse=False))
            self.first.shapes.append({"module": name, "type": type(module).__name__, "output": _shape_of(out),
                                      "params": params})
            if isinstance(module, RELU_FAMILY) and isinstance(out, torch.Tensor) and out.ndim >= 1:
                dim = 1 if out.ndim == 4 else out.ndim - 1  # conv maps: channels; otherwise the features
                active = (out.detach() > 0).movedim(dim, -1).reshape(-1, out.shape[dim]).any(0)
                units = int(active.numel())
                self.first.dead[name] = (units - int(active.sum()), units)
                self.first.units += units
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class PeakMemory:
    """The peak memory of one step over what was in use before: ``torch.cuda.max_memory_allocated`` on a GPU
    (the peak counter is reset for it), the process's resident set on a CPU (polled, and VmHWM when the step
    set a new high)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.cuda:  # polling from before the baseline: the thread's own memory is not the step's
            self._peak = 0.0
            self._thread = threading.Thread(target=self._poll, name="txwatch.preflight-memory", daemon=True)
            self._thread.start()
        self.base = self._now()
        self._hwm0 = _vm_hwm()
        self._peak = max(self._peak if not self.cuda else 0.0, self.base)

    def _now(self) -> float:
        if self.cuda:
            return float(torch.cuda.memory_allocated(self.device))
        import psutil

        return float(psutil.Process().memory_info().rss)

    def start(self) -> None:
        """The step begins (on a GPU the peak counter restarts; on a CPU the polling runs since the baseline)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def _poll(self) -> None:
        while not self._stop.wait(RSS_POLL_S):
            self._peak = max(self._peak, self._now())

    def stop(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return float(torch.cuda.max_memory_allocated(self.device)) - self.base
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = max(self._peak, self._now())
        hwm = _vm_hwm()
        if hwm is not None and self._hwm0 is not None and hwm > self._hwm0:
            peak = max(peak, hwm)  # the step set the process's high-water mark: that is its exact peak
        return peak - self.base


def _vm_hwm() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def first_step_and_overfit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any, loss_fn: Any,
                           steps: int, memory: PeakMemory) -> FirstStep:
    """Train the copy ``steps`` times on the batch; the first step recorded in detail."""
    first = FirstStep()
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    model.train()
    recorder = _Recorder(model, first)
    memory.start()
    try:
        try:
            loss = loss_of(model, batch, loss_fn)
        finally:
            recorder.remove()
        loss.backward()
        _note_gradients(model, first)
        optimizer.step()
    finally:
        first.peak_bytes = memory.stop()
    optimizer.zero_grad(set_to_none=True)
    first.losses.append(float(loss.detach()))
    for _ in range(steps - 1):
        loss = loss_of(model, batch, loss_fn)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        first.losses.append(float(loss.detach()))
        if not math.isfinite(first.losses[-1]):
            break
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    first.frozen = not before or all(torch.equal(a, b) for a, b in zip(before, after))
    return first


def _note_gradients(model: torch.nn.Module, first: FirstStep) -> None:
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        first.trainable += 1
        if p.grad is None:
            first.no_grad.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            first.nonfinite_grad.append(name)
        elif not bool(p.grad.any()):
            first.zero_grad.append(name)


def overfit_check(first: FirstStep, steps: int, lr: float | None, suggested: float | None) -> Check:
    losses = first.losses
    start, best = losses[0], min((x for x in losses if math.isfinite(x)), default=math.nan)
    figures: dict[str, Any] = {"steps": len(losses), "first loss": start, "lowest loss": best, "last loss": losses[-1]}
    fix = ["Verify the setup can overfit this single batch (the loss should go near zero) before tuning: "
           "look for a bug in the data, the labels or the loss first."]
    if not math.isfinite(start) or not all(math.isfinite(x) for x in losses):
        return Check("overfit", FAIL, "the loss became NaN or infinite while fitting one batch", figures,
                     ["learning rate far too high, or no gradient clipping",
                      "a log(0) or division by zero in the loss"],
                     ["Reduce the learning rate (3-10x lower); clip gradients to norm 1.0."])
    if start <= 0:
        return Check("overfit", WARN, "the first loss is already 0 or below: nothing to overfit", figures)
    drop = 1.0 - best / start
    figures["drop"] = drop
    if drop >= OVERFIT_DROP:
        return Check("overfit", PASS, f"the loss fell {drop:.0%} within {len(losses)} steps on one batch", figures)
    causes = []
    if first.frozen:
        causes.append("a frozen model: no parameter changed (requires_grad off, or the optimizer holds none)")
    if lr is not None and suggested is not None and lr < suggested / 10:
        causes.append(f"the learning rate {lr:.3g} is far too low (the range test suggests {suggested:.3g}): "
                      "increase it 3-10x")
    elif drop < 0.1 and not first.frozen:
        causes.append("a learning rate far too low: the loss barely moves")
    causes.append("the labels do not match the inputs (shuffled, off by one, the wrong column)")
    causes.append("the loss does not fit the task (logits vs. probabilities, the target's shape or dtype, "
                  "a reduction that averages over padding)")
    verdict = WARN if drop >= OVERFIT_STILL_FALLING else FAIL
    return Check("overfit", verdict,
                 f"the loss fell only {drop:.0%} in {len(losses)} steps on one batch (at least 90% expected)",
                 figures, causes, fix)


def gradient_check(first: FirstStep) -> Check:
    figures: dict[str, Any] = {"trainable tensors": first.trainable, "no gradient": len(first.no_grad),
                               "zero gradient": len(first.zero_grad), "non-finite": len(first.nonfinite_grad)}
    dead = sum(d for d, _ in first.dead.values())
    share = dead / first.units if first.units else 0.0
    if first.units:
        figures["dead ReLU units"] = f"{dead}/{first.units} ({share:.1%})"
    causes, fix = [], []
    verdict = PASS
    if first.no_grad:
        verdict = FAIL
        causes.append("no gradient reached " + _names(first.no_grad) + ": an unused branch, a .detach(), or a "
                      "forward under torch.no_grad() cuts them off the loss")
        fix.append("Check that these layers are used in the forward pass and not behind .detach() or "
                   "torch.no_grad(); freeze them (requires_grad=False) if they are not meant to train.")
    if first.nonfinite_grad:
        verdict = FAIL
        causes.append("NaN/Inf gradients in " + _names(first.nonfinite_grad))
        fix.append("Look for log(0), division by zero or overflow in the forward pass; clip gradients to norm 1.0.")
    if first.zero_grad:
        verdict = FAIL
        causes.append("exactly zero gradient in " + _names(first.zero_grad) + ": dead units, or weights zeroed "
                      "downstream")
        fix.append("Check for weights zeroed by a bug (masking, a bad checkpoint load) in the layers after them.")
    if share >= DEAD_WARN:
        verdict = FAIL if share >= DEAD_FAIL else (WARN if verdict == PASS else verdict)
        worst = sorted(first.dead.items(), key=lambda kv: -kv[1][0] / max(kv[1][1], 1))[:3]
        causes.append(f"{share:.0%} of the ReLU units never fire on this batch (" +
                      ", ".join(f"{n}: {d}/{u}" for n, (d, u) in worst) + ")")
        fix.append("Dead ReLUs: lower the learning rate, use LeakyReLU/GELU, check the initialization and the "
                   "inputs' scale.")
    summary = ("every trainable parameter gets a finite, non-zero gradient" if verdict == PASS and not causes
               else "the gradient does not flow everywhere")
    return Check("gradient_flow", verdict, summary, figures, causes, fix)


def shapes_check(first: FirstStep) -> Check:
    rows = first.shapes
    return Check("shapes", PASS, f"{len(rows)} modules ran on the batch; output shapes below",
                 {"modules": len(rows)}, table=rows)


def _names(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
