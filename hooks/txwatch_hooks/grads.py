"""Batched tensor math for sampled steps: per-parameter norms, non-finite counts, update sizes.

Everything runs on detached tensors with foreach kernels (a handful of launches per (device, dtype) group,
not one per parameter) and, on accelerators, stays on the device: no ``.item()``, no ``.cpu()``, no sync.
Results are read later by the transport's worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def grad_stats(names: Sequence[str], grads: Sequence[torch.Tensor]) -> tuple[list, list]:
    """Per-parameter L2 norms (fp32, stacked per group) and non-finite value counts.

    Returns ([(names, norms)], [count]) with one entry per (device, dtype) group; on accelerators both stay
    on the device (no sync).
    """
    norms_out, bad_out = [], []
    with torch.no_grad():
        for idx in _groups(grads).values():
            group = [grads[i] for i in idx]
            norms = _norms(group)
            norms_out.append(([names[i] for i in idx], norms))
            bad_out.append(_nonfinite_cpu(group, norms) if norms.device.type == "cpu" else _nonfinite(group))
    return norms_out, bad_out


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
    """Parameters copied just before ``optimizer.step()`` on an update-ratio step, and their norms.

    ``take()`` copies (pre-hook), ``finish()`` measures the change (post-hook). The copy lives from a step's
    pre-hook to its post-hook; only when the very next step samples updates too are its buffers kept for
    it (no gap between sampled steps, and no fresh page-faulting allocation per step). ``release()`` frees
    them, so no second copy of the model is kept between sampled steps.
    """

    def __init__(self, names: Sequence[str], params: Sequence[torch.Tensor]):
        self.names = list(names)
        self.params = [p.detach() for p in params]
        self.groups: list[tuple[list[int], list[torch.Tensor], torch.Tensor | None]] = []
        self.taken = False

    def take(self) -> None:
        with torch.no_grad():
            if not self.groups:
                self.groups = [(idx, torch._foreach_mul([self.params[i] for i in idx], 1.0), None)
                               for idx in _groups(self.params).values()]
            else:
                for idx, copy, _ in self.groups:
                    _copy_into(copy, [self.params[i] for i in idx])
            self.groups = [(idx, copy, _norms(copy))
                           for idx, copy, _ in self.groups]
        self.taken = True

    def finish(self, keep: Sequence[bool]) -> list:
        """Norms of (after - before). Parameters not flagged in ``keep`` (no gradient this step) get the
        name None, and the worker skips them (selecting on the device would cost a sync).

        Returns [(names, norms before, norms of the change)] per group.
        """
        out = []
        if not self.taken:
            return out
        with torch.no_grad():
            for idx, copy, before in self.groups:
                torch._foreach_sub_(copy, [self.params[i] for i in idx])
                delta = _norms(copy)
                names = [self.names[i] if keep[i] else None for i in idx]
                if any(n is not None for n in names):
                    out.append((names, before, delta))
        self.taken = False
        return out

    def release(self) -> None:
        self.groups = []
        self.taken = False
