"""The guide's incorrect-masking pitfall: padding the model can see. With an attention mask that has zeros,
the padded positions' tokens are replaced by others; if the outputs at the real positions change, the real
tokens attend to the padding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from txwatch_hooks.sanity.report import FAIL, PASS, SKIPPED, Check

TOLERANCE = 1e-4  # relative change of the real positions' outputs: float noise is ~1e-7, visible padding ~1e-1


def _output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = out.get("logits", out.get("last_hidden_state"))
        return out if isinstance(out, torch.Tensor) else None
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def masking_check(model: torch.nn.Module, batch: Any, forward: Any) -> Check:
    """``forward(model, batch)`` runs the model on a batch (a mapping with ``input_ids`` and ``attention_mask``)."""
    if not isinstance(batch, Mapping) or not isinstance(batch.get("attention_mask"), torch.Tensor):
        return Check("masking", SKIPPED, "the batch has no attention_mask")
    mask, ids = batch["attention_mask"], batch.get("input_ids")
    if not bool((mask == 0).any()):
        return Check("masking", SKIPPED, "the attention mask has no zeros: no padding in this batch")
    if not isinstance(ids, torch.Tensor) or ids.shape != mask.shape:
        return Check("masking", SKIPPED, "no input_ids of the mask's shape to perturb")
    padded, real = mask == 0, mask != 0
    pool = ids[real]
    if pool.numel() == 0:
        return Check("masking", SKIPPED, "every position is padding")
    others = pool[torch.arange(int(padded.sum()), device=pool.device) % pool.numel()]
    others = torch.where(others == ids[padded], (others + 1) % (int(ids.max()) + 1), others)
    changed_ids = ids.clone()
    changed_ids[padded] = others
    changed = {**batch, "input_ids": changed_ids}
    was_training = model.training
    model.eval()  # no dropout: the two forwards must differ only by the padded tokens
    try:
        with torch.no_grad():
            a, b = _output(forward(model, batch)), _output(forward(model, changed))
    finally:
        model.train(was_training)
    if a is None or b is None or a.shape != b.shape:
        return Check("masking", SKIPPED, "the model's output has no logits or hidden states to compare")
    if a.shape[:2] == mask.shape:  # per-position outputs: compare the real positions only
        a, b = a[real], b[real]
    scale = float(a.float().abs().max()) or 1.0
    change = float((a.float() - b.float()).abs().max()) / scale
    figures = {"padded positions": int(padded.sum()), "output change at real positions": change}
    if change <= TOLERANCE:
        return Check("masking", PASS, "changing the padding tokens leaves the real positions' outputs unchanged",
                     figures)
    return Check("masking", FAIL, "the real tokens see the padding: changing only the padded tokens changes the "
                 "outputs at the real positions", figures,
                 ["incorrect masking: the attention mask is not applied to the attention scores"],
                 ["Mask the padding tokens: attn_scores = attn_scores.masked_fill(attention_mask == 0, "
                  "float('-inf')) before the softmax (or pass key_padding_mask / attention_mask to the layer)."])
