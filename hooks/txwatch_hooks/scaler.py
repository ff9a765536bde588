"""Loss scaling (``torch.amp.GradScaler``, fp16): the scale of a step's gradients and the steps it skipped.

``scaler.scale(loss).backward()`` leaves every gradient multiplied by the loss scale (65536 to start). An
iteration whose scaled gradients overflow is skipped: ``scaler.step()`` does not call ``optimizer.step()`` (a
fused optimizer is called with ``found_inf`` set and leaves its parameters alone), and ``scaler.update()``
lowers the scale. That is the scaler calibrating, not the model blowing up. Knowing the scaler, the hooks
report the norms of the unscaled gradients, leave a skipped step's overflowed gradients out, and count the
skips (``scaler_skipped``, a running total) next to the scale itself (``loss_scale``).

Nothing here syncs with the device: the scale is a device tensor, cloned at capture because ``update()``
changes it in place, and the ``update()`` calls are counted by that tensor's version counter, a host-side
integer that each in-place change advances by one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from txwatch_hooks import wire
from txwatch_hooks.records import to_float

_WRAPPER_DEPTH = 5  # as unwrap_optimizer: Lightning and accelerate wrap an optimizer once or twice


def check_scaler(scaler: Any) -> Any:
    """``scaler`` if it scales (an enabled ``torch.amp.GradScaler`` or subclass), None for None or a disabled
    one (``GradScaler(enabled=use_amp)`` is a common pattern). Raises TypeError for anything else."""
    if scaler is None:
        return None
    if not all(callable(getattr(scaler, m, None)) for m in ("is_enabled", "get_scale", "_get_scale_async")):
        raise TypeError(f"scaler must be a torch.amp.GradScaler (or None), not {type(scaler).__name__}")
    return scaler if scaler.is_enabled() else None


def scaler_in(holder: Any) -> Any:
    """The enabled GradScaler ``holder.scaler`` is, else None (a framework object found on the way, e.g.
    Lightning's precision plugin; an unrelated ``scaler`` attribute is not an error)."""
    try:
        return check_scaler(getattr(holder, "scaler", None))
    except TypeError:
        return None


def find_scaler(optimizer: Any) -> Any:
    """The enabled GradScaler an optimizer wrapper carries (accelerate's ``AcceleratedOptimizer.scaler``, which
    is what the transformers Trainer hands its callbacks), else None."""
    for _ in range(_WRAPPER_DEPTH):  # AcceleratedOptimizer is itself a torch Optimizer: look at every level
        found = scaler_in(optimizer)
        if found is not None:
            return found
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            return None
        optimizer = inner
    return None


class ScalerWatch:
    """Follows one enabled GradScaler for a Capture: the scale at each gradient capture, and skipped steps.

    A skipped iteration is seen in one of two ways. A plain optimizer's ``step()`` is not called at all: of
    the ``update()`` calls between two of its steps, all but the first closed skipped iterations (``on_step``
    counts them with the scale's version counter). A fused optimizer (``_step_supports_amp_scaling``) is
    stepped anyway, with ``optimizer.found_inf`` set: those flags are added up on the device, read by the worker.
    """

    def __init__(self, scaler: Any):
        self.scaler = scaler
        self._tensor = scaler._get_scale_async()  # None until the first scaler.scale()
        self._last = (_version(self._tensor) or 0) - 1  # the iteration of the latest step seen
        self._skips = 0  # iterations skipped without a step (plain optimizers)
        self._fused_skips: torch.Tensor | None = None  # steps a fused optimizer skipped, on the device

    def iteration(self) -> int | None:
        """How many iterations the scaler has closed (``update()`` calls); None before its first ``scale()``."""
        return _version(self.scaler._get_scale_async())

    def capture(self) -> tuple[torch.Tensor | None, int | None]:
        """At the end of a sampled backward: (the scale its gradients carry, the iteration they belong to)."""
        scale = self.scaler._get_scale_async()
        if scale is None:
            return None, None
        return scale.detach().clone(), _version(scale)  # clone: update() changes it in place (async, no sync)

    def on_step(self, optimizer: Any) -> torch.Tensor | None:
        """In ``optimizer.step()``'s post-hook: count the iterations skipped since the previous step; returns
        this step's ``found_inf`` (a device tensor, > 0 when a fused optimizer skipped it) or None."""
        tensor = self.scaler._get_scale_async()
        version = _version(tensor)
        if version is not None:
            if tensor is not self._tensor and self._tensor is not None:
                self._last = version - 1  # the scale tensor was replaced: start counting afresh
            self._tensor = tensor
            self._skips += max(version - self._last - 1, 0)
            self._last = version
        found = getattr(optimizer, "found_inf", None)  # set by scaler.step() only around a fused step
        if not isinstance(found, torch.Tensor):
            return None
        skipped = found.detach().clamp(max=1.0)  # one skip however many devices overflowed
        self._fused_skips = skipped if self._fused_skips is None else self._fused_skips + skipped
        return found

    def stale(self, iteration: int | None) -> bool:
        """True when gradients captured in ``iteration`` belong to one the scaler has closed since without a
        step: it skipped them (under Lightning or transformers the step count moved on regardless)."""
        return iteration is not None and iteration != self.iteration()

    def trailing(self) -> dict[str, float] | None:
        """At the end of the run: the iterations the scaler closed after the last optimizer step were all
        skipped (a plain optimizer is not stepped, so no step reports them: a scale collapsing toward 0 that
        ended the run would go unseen). Returns ``{scaler_skipped, loss_scale}`` counting them, or None when
        there are none. Reads the scale (a sync): for the end only."""
        tensor = self.scaler._get_scale_async()
        version = _version(tensor)
        if version is None or (self._tensor is not None and tensor is not self._tensor):
            return None
        trailing = version - self._last - 1
        if trailing <= 0:
            return None
        return {wire.SCALER_SKIPPED: _skips(self._skips + trailing, self._fused_skips), wire.LOSS_SCALE: to_float(tensor)}

    def sample(self, scale: torch.Tensor | None, found: torch.Tensor | None) -> ScalerSample:
        return ScalerSample(scale, found, self._skips, self._fused_skips)


class ScalerSample:
    """One sampled step's loss-scaling figures; values may be device tensors (read by the worker)."""

    __slots__ = ("scale", "found", "skips", "fused_skips")

    def __init__(self, scale: torch.Tensor | None, found: torch.Tensor | None, skips: int,
                 fused_skips: torch.Tensor | None):
        self.scale, self.found, self.skips, self.fused_skips = scale, found, skips, fused_skips

    def emit(self, builder: wire.BatchBuilder, step: int, t: float) -> tuple[bool, float]:
        """Add ``loss_scale`` and ``scaler_skipped`` (with a gradient sample: ``scale`` is its scale); returns
        (the scaler skipped this step, the divisor that unscales this step's gradient norms)."""
        skipped = self.found is not None and to_float(self.found) > 0
        if self.scale is None:
            return skipped, 1.0
        builder.add_point(wire.SCALER_SKIPPED, step, t, _skips(self.skips, self.fused_skips))
        scale = to_float(self.scale)
        builder.add_point(wire.LOSS_SCALE, step, t, scale)
        # a scale that underflowed to 0 (or worse) unscales nothing: the norms go as they are
        return skipped, scale if math.isfinite(scale) and scale > 0 else 1.0


def _skips(plain: int, fused: torch.Tensor | None) -> float:
    """Iterations skipped in all: counted without a step (plain optimizers) plus a fused optimizer's flags."""
    return float(plain + (to_float(fused) if fused is not None else 0.0))


def _version(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    try:
        return tensor._version
    except RuntimeError:  # an inference-mode tensor has no version counter: skips are not counted
        return None
