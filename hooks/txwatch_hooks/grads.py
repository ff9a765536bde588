"""Batched tensor math for sampled steps: per-parameter norms, non-finite counts, update sizes.

Everything runs on detached tensors with foreach kernels (a handful of launches per (device, dtype) group,
not one per parameter) and, on accelerators, stays on the device: no ``.item()``, no ``.cpu()``, no sync.
Results are read later by the transport's worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

# The non-finite count multiplies gradients into a temporary; chunks bound that temporary's size.
NONFINITE_CHUNK_ELEMENTS = 1 << 25  # 32 M elements (128 MiB in fp32) at most at once


def _norms(tensors: Sequence[torch.Tensor], ord: int = 2) -> torch.Tensor:
    """Stacked fp32 norms of one (device, dtype) group, one foreach call (``dtype=`` needs a recent torch;
    older ones cast after). fp64 is reduced in fp64 (norm's ``dtype`` may not narrow), then sent as fp32."""
    if tensors[0].dtype == torch.float64:
        return torch.stack(torch._foreach_norm(tensors, ord)).float()
    try:
        return torch.stack(torch._foreach_norm(tensors, ord, dtype=torch.float32))
    except TypeError:
        return torch.stack(torch._foreach_norm(tensors, ord)).float()


def _copy_into(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # torch < 2.2
        for d, t in zip(dst, src):
            d.copy_(t)


def _groups(tensors: Sequence[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def grad_norms(names: Sequence[str], grads: Sequence[torch.Tensor],
               groups: list[list[int]] | None = None) -> list[tuple[list[str], torch.Tensor]]:
    """Per-parameter L2 norms, fp32, stacked per (device, dtype) group: [(names, norms)]; no sync.
    ``groups``: the grouping (``groups_of``) when the caller knows it already (it runs on every step)."""
    groups = groups_of(grads) if groups is None else groups
    with torch.no_grad():
        if len(groups) == 1:
            return [(list(names), _norms(grads))]
        return [([names[i] for i in idx], _norms([grads[i] for i in idx])) for idx in groups]


def groups_of(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` by (device, dtype), in first-seen order."""
    return list(_groups(tensors).values())


def grad_stats(names: Sequence[str], grads: Sequence[torch.Tensor],
               norms: list[tuple[list[str], torch.Tensor]] | None = None,
               groups: list[list[int]] | None = None) -> tuple[list, list]:
    """Per-parameter L2 norms (``grad_norms``, or the ones already taken) and non-finite value counts.

    Returns ([(names, norms)], [count]) with one entry per (device, dtype) group; on accelerators both stay
    on the device (no sync).
    """
    groups = groups_of(grads) if groups is None else groups
    norms = grad_norms(names, grads, groups) if norms is None else norms
    bad_out = []
    with torch.no_grad():
        for idx, (_, group_norms) in zip(groups, norms):
            group = [grads[i] for i in idx]
            bad_out.append(_nonfinite_cpu(group, group_norms) if group_norms.device.type == "cpu"
                           else _nonfinite(group))
    return norms, bad_out


class GradInterval:
    """Every step's gradient norms folded on the device between two gradient samples, so that a spike on a
    step that is not sampled is still seen: per parameter the largest norm, and of the total norm (the one
    ``clip_grad_norm_`` computes, before clipping) the largest, the sum (for the mean) and the count of steps
    where it was not finite. Device tensors throughout: nothing here waits for the device.

    The per-parameter maxima restart when the set of parameters with a gradient changes (a layer skipped
    in some steps): they are elementwise over a fixed layout.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._layout: tuple[tuple[str, ...], ...] | None = None
        self._max: list[torch.Tensor] = []
        self._totals: list[torch.Tensor] = []  # one 0-d tensor a step; reduced only at take()

    def add(self, norms: list[tuple[list[str], torch.Tensor]], scale: torch.Tensor | None = None,
            skipped: torch.Tensor | None = None) -> None:
        """One optimizer step's gradient norms; ``scale``: the loss scale they carry; ``skipped``: > 0 when a
        fused GradScaler step skipped it (its overflowed gradients then count as zero, not as a spike).
        Two small kernels a step in the common case (the total, the running maxima): it runs on every step."""
        with torch.no_grad():
            vectors = [v for _, v in norms]
            if scale is not None:
                vectors = [v / scale.to(v.device) for v in vectors]
            if skipped is not None:
                vectors = [torch.where(skipped.to(v.device) > 0, torch.zeros_like(v), v) for v in vectors]
            device = vectors[0].device
            joined = vectors[0] if len(vectors) == 1 else torch.cat([v.to(device) for v in vectors])
            self._totals.append(torch.linalg.vector_norm(joined))
            layout = tuple(tuple(names) for names, _ in norms)
            if layout != self._layout:
                self._layout, self._max = layout, [v.clone() for v in vectors]
            else:
                for m, v in zip(self._max, vectors):
                    torch.maximum(m, v, out=m)
        self.steps += 1

    def take(self) -> IntervalSample | None:
        """The figures since the last ``take()`` (None when no step was added), and start a new interval."""
        if not self.steps:
            return None
        with torch.no_grad():
            totals = torch.stack(self._totals)
            sample = IntervalSample(
                [(list(names), m) for names, m in zip(self._layout or (), self._max)],
                totals.max(), totals.sum(), (~torch.isfinite(totals)).sum(), self.steps)
        self.reset()
        return sample


class IntervalSample:
    """What ``GradInterval.take()`` hands to the worker; tensors are read there."""

    __slots__ = ("maxima", "total_max", "total_sum", "bad", "steps")

    def __init__(self, maxima: list, total_max: Any, total_sum: Any, bad: Any, steps: int):
        self.maxima, self.total_max, self.total_sum, self.bad, self.steps = maxima, total_max, total_sum, bad, steps


def _nonfinite_cpu(group: list[torch.Tensor], norms: torch.Tensor) -> float:
    # On the CPU reading a tensor is no device sync, so look at the norms first: a tensor holds NaN/Inf
    # only if its norm is not finite (an overflowing norm is counted exactly below, as 0). Counting then
    # touches just those tensors instead of every gradient.
    values = norms.tolist()
    if all(math.isfinite(v) for v in values):
        return 0.0
    return float(sum(int((~torch.isfinite(t)).sum()) for t, v in zip(group, values) if not math.isfinite(v)))


def _nonfinite(group: list[torch.Tensor]) -> torch.Tensor:
    # On a device, without a sync: x * 0 is 0 for finite x and NaN for NaN/Inf, and the 0-"norm" counts
    # non-zeros, so it counts those. Chunks bound the temporary product's size.
    counts = []
    chunk: list[torch.Tensor] = []
    size = 0
    for t in group:
        chunk.append(t)
        size += t.numel()
        if size >= NONFINITE_CHUNK_ELEMENTS:
            counts.append(_norms(torch._foreach_mul(chunk, 0.0), 0).sum())
            chunk, size = [], 0
    if chunk:
        counts.append(_norms(torch._foreach_mul(chunk, 0.0), 0).sum())
    return torch.stack(counts).sum()


class Snapshot:
    """Parameters copied just before ``optimizer.step()`` on an update-ratio step, within a memory budget.

    ``take()`` copies (pre-hook), ``finish()`` measures the change (post-hook). The copy may take at most
    ``budget_bytes`` (``Options.update_memory_bytes``). Planned once, by water-filling from the smallest
    tensor up: a tensor that fits its share of what is left is copied whole and its ratio is exact; a larger
    one is *sampled*: a fixed strided set of its coordinates (the stride coprime with its last dimension, so a
    weight matrix is sampled across all its columns and rows), and its ratio is that of the sample,
    ``||after_S - before_S|| / ||before_S||``. For dense updates (SGD, Adam on weight matrices) a sample of k
    coordinates estimates it within about ``1/sqrt(2k)`` (a few thousand coordinates: 1-2%). Its parameter
    norm is always exact (taken on the parameter itself). Sparse updates (an embedding of which a batch
    touches a few rows) are estimated poorly when sampled; such a tensor is exact whenever it fits.

    The buffers live from a step's pre-hook to its post-hook and are kept only while the next step samples
    updates too (no fresh allocation per step); ``release()`` frees them.
    """

    def __init__(self, names: Sequence[str], params: Sequence[torch.Tensor], budget_bytes: int):
        self.names = list(names)
        self.params = [p.detach() for p in params]
        self.budget_bytes = budget_bytes
        whole, self.sampled = _plan(self.params, budget_bytes)
        self._whole = [[whole[j] for j in idx] for idx in _groups([self.params[i] for i in whole]).values()]
        self._copies: list[list[torch.Tensor]] = []
        self._samples: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []
        self.taken = False

    @property
    def nbytes(self) -> int:
        """What the copy holds (whole tensors and samples)."""
        return (sum(t.numel() * t.element_size() for group in self._copies for t in group)
                + sum(t.numel() * t.element_size() for t in self._samples))

    def _views(self) -> list[torch.Tensor]:
        return [self.params[i].view(-1).as_strided((k,), (stride,), offset) for i, offset, stride, k in self.sampled]

    def take(self) -> None:
        with torch.no_grad():
            if not self._copies and not self._samples:
                self._copies = [torch._foreach_mul([self.params[i] for i in idx], 1.0) for idx in self._whole]
                self._samples = [v.clone() for v in self._views()]
            else:
                for idx, copy in zip(self._whole, self._copies):
                    _copy_into(copy, [self.params[i] for i in idx])
                for buffer, view in zip(self._samples, self._views()):
                    buffer.copy_(view)
            # exact norms before the step: of the whole copies, and of the sampled parameters themselves
            self._before = [_norms(copy) for copy in self._copies]
            if self.sampled:
                self._before.append(_norms([self.params[i] for i, *_ in self.sampled]))
        self.taken = True

    def finish(self, keep: Sequence[bool]) -> list:
        """Norms of (after - before). Parameters not flagged in ``keep`` (no gradient this step) get the
        name None, and the worker skips them (selecting on the device would cost a sync).

        Returns [(names, norms before, norms of the change)] per group; for a sampled tensor the change's
        norm is its sample's ratio times its exact norm, so the worker's ``delta / before`` is the ratio.
        """
        if not self.taken:
            return []
        out = []
        with torch.no_grad():
            for idx, copy, before in zip(self._whole, self._copies, self._before):
                torch._foreach_sub_(copy, [self.params[i] for i in idx])
                out.append((idx, before, _norms(copy)))
            if self.sampled:
                sample_before = _norms(self._samples)
                torch._foreach_sub_(self._samples, self._views())
                exact = self._before[-1]
                ratio = _norms(self._samples) / sample_before.clamp_min(torch.finfo(torch.float32).tiny)
                out.append(([i for i, *_ in self.sampled], exact, ratio * exact))
        self.taken = False
        named = []
        for idx, before, delta in out:
            names = [self.names[i] if keep[i] else None for i in idx]
            if any(n is not None for n in names):
                named.append((names, before, delta))
        return named

    def release(self) -> None:
        self._copies, self._samples, self._before = [], [], []
        self.taken = False


def _plan(params: Sequence[torch.Tensor], budget_bytes: int) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """Which tensors ``Snapshot`` copies whole (indices) and which it samples: (index, offset, stride, k)."""
    whole, sampled = [], []
    order = sorted(range(len(params)), key=lambda i: params[i].numel())
    left = budget_bytes
    for n, i in enumerate(order):
        p = params[i]
        size, share = p.numel() * p.element_size(), left // (len(order) - n)
        if size <= share:
            whole.append(i)
            left -= size
            continue
        k = max(share // p.element_size(), 1)
        if not p.is_contiguous():
            continue  # a strided sample needs one flat view; such parameters are rare (left out)
        stride = max(p.numel() // k, 1)
        last = p.shape[-1] if p.dim() else 1
        while math.gcd(stride, last) != 1 and stride > 1:
            stride -= 1
        k = min(k, (p.numel() - 1) // stride + 1)
        sampled.append((i, (p.numel() - 1 - (k - 1) * stride) // 2, stride, k))
        left -= k * p.element_size()
    return sorted(whole), sampled
