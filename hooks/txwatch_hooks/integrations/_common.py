"""What the framework callbacks share: metric-name cleanup and ``watch()`` keyword handling."""

from __future__ import annotations

import re
from typing import Any

from txwatch_hooks.options import Options
from txwatch_hooks.scaler import check_scaler

_BAD = re.compile(r"[^A-Za-z0-9_.:\-]+")
# what frameworks and users call the validation loss, mapped to the name the built-in rules read
_VAL_LOSS_ALIASES = {"val_loss", "validation_loss", "valid_loss", "eval_loss", "val_loss_epoch", "val/loss",
                     "validation/loss", "eval/loss"}


def metric_name(name: str) -> str | None:
    """A framework's metric name as a txwatch series name ("val/acc" -> "val_acc"); None if unusable."""
    if name in _VAL_LOSS_ALIASES:
        return "val_loss"
    clean = _BAD.sub("_", name.replace("/", "_")).strip("_")[:100]
    if not clean or not (clean[0].isalpha() or clean[0] == "_"):
        return None
    return clean


def check_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate ``watch()`` keywords now (a typo fails when the callback is made, not mid-fit)."""
    own = {"run", "project", "config", "endpoint", "token", "scaler"}
    Options.from_kwargs({k: v for k, v in kwargs.items() if k not in own})
    check_scaler(kwargs.get("scaler"))
    return dict(kwargs)
