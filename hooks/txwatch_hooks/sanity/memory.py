"""The guide's memory rule of thumb against the measured peak and the device: total training memory is about
parameters x 16 bytes (weights, gradients, Adam's two moments) plus batch x sequence x hidden x layers x 40
bytes of activations."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import torch

from txwatch_hooks.sanity.report import FAIL, PASS, WARN, Check
from txwatch_hooks.sanity.state import batch_tensors

BYTES_PER_PARAM = 16
BYTES_PER_ACTIVATION = 40
MARGIN = 0.9  # "fit in available memory with some margin for safety": plan for 90% of the device
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def dims(model: torch.nn.Module, batch: Any, config: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """Batch, sequence, hidden and layers, each with where it came from: the run's config, the model's own
    config (transformers), or the model's structure and the batch."""
    found: dict[str, tuple[int, str]] = {}
    tensors = batch_tensors(batch)
    named = dict(tensors)
    if tensors:
        found["batch"] = (int(tensors[0][1].shape[0]) if tensors[0][1].ndim else 1, "the batch")
    seq = next((named[k] for k in ("input_ids", "attention_mask") if k in named and named[k].ndim >= 2), None)
    if seq is None:
        seq = next((t for _, t in tensors if t.ndim == 2 and not t.is_floating_point()), None)
    found["seq"] = (int(seq.shape[1]), "the batch") if seq is not None else (1, "no sequence dimension")
    model_config = getattr(model, "config", None)
    for key, names in (("hidden", _HIDDEN_KEYS), ("layers", _LAYER_KEYS)):
        for name in names:
            value = getattr(model_config, name, None)
            if isinstance(value, int) and value > 0:
                found[key] = (value, f"model.config.{name}")
                break
    for key, name in (("hidden", "hidden_size"), ("layers", "num_layers"), ("seq", "seq_len")):
        if isinstance(config.get(name), int) and config[name] > 0:
            found[key] = (config[name], f"config {name}")
    if "hidden" not in found or "layers" not in found:
        widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
        widths += [m.out_channels for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        blocks = max((len(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList)), default=0)
        if "hidden" not in found and widths:
            found["hidden"] = (collections.Counter(widths).most_common(1)[0][0], "most common layer width")
        if "layers" not in found:
            found["layers"] = ((blocks, "longest ModuleList") if blocks >= 2
                               else (max(len(widths), 1), "Linear/Conv layers"))
    found.setdefault("hidden", (1, "unknown"))
    found.setdefault("batch", (1, "unknown"))
    return found


def device_total(device: torch.device) -> float | None:
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    try:
        import psutil

        return float(psutil.virtual_memory().total)
    except Exception:
        return None


def memory_check(model: torch.nn.Module, batch: Any, config: Mapping[str, Any], measured: float | None,
                 device: torch.device) -> Check:
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    d = dims(model, batch, config)
    (b, _), (s, _), (h, _), (layers, _) = d["batch"], d["seq"], d["hidden"], d["layers"]
    state = params * BYTES_PER_PARAM
    per_example = s * h * layers * BYTES_PER_ACTIVATION
    estimate = state + b * per_example
    total = device_total(device)
    figures: dict[str, Any] = {"parameters": params, "estimate": _gib(estimate), "state (params x 16)": _gib(state),
                               "activations": _gib(b * per_example),
                               "dims": ", ".join(f"{k} {v} ({src})" for k, (v, src) in d.items())}
    if measured is not None:
        figures["measured step peak"] = _gib(measured)
        figures["measured / estimate"] = measured / estimate if estimate else None
    if not total:
        return Check("memory", PASS, f"rule of thumb {_gib(estimate)}; the device's total is unknown", figures)
    need = max(estimate, measured or 0.0)
    figures["device total"] = _gib(total)
    figures["headroom"] = 1.0 - need / total
    largest = int((MARGIN * total - state) // per_example) if per_example else None
    figures["largest batch (estimate, 90% of the device)"] = max(largest, 0) if largest is not None else "-"
    fix = ["Reduce the sequence length if the task permits (attention memory grows quadratically with it).",
           "Enable mixed precision (torch.autocast): it halves activation and gradient memory.",
           "Enable gradient checkpointing (torch.utils.checkpoint): 40-50% less activation memory.",
           "Reduce the batch size and use gradient accumulation (B_eff = B_micro x N_accum)."]
    if need > total:
        return Check("memory", FAIL, f"needs about {_gib(need)}, more than the device's {_gib(total)}", figures,
                     ["batch or sequence too large for the device"], fix)
    if need > MARGIN * total:
        return Check("memory", WARN, f"needs about {_gib(need)} of {_gib(total)}: less than 10% headroom",
                     figures, ["batch or sequence close to the device's limit"], fix)
    return Check("memory", PASS, f"needs about {_gib(need)} of {_gib(total)}", figures)


def _gib(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
