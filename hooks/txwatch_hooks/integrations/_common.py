"""What the framework callbacks share: metric-name cleanup and ``watch()`` keyword handling."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from txwatch_hooks import wire
from txwatch_hooks.identity import check_resume
from txwatch_hooks.means import count_name
from txwatch_hooks.options import Options
from txwatch_hooks.scaler import check_scaler

_BAD = re.compile(r"[^A-Za-z0-9_.:\-]+")
# what frameworks and users call the validation loss, mapped to the name the built-in rules read
_VAL_LOSS_ALIASES = {"val_loss", "validation_loss", "valid_loss", "eval_loss", "val_loss_epoch", "val/loss",
                     "validation/loss", "eval/loss"}
_VALIDATION = re.compile(r"^(val|valid|validation|eval)([_/.:-]|$)")
# the series the hooks send themselves: a framework's metric of the same name would mix into them
OWN_SERIES = frozenset({wire.LOSS, wire.VAL_LOSS, count_name(wire.LOSS), wire.GRAD_NORM_TOTAL, wire.GRAD_NONFINITE,
                        wire.UPDATE_RATIO_MAX, wire.LOSS_SCALE, wire.SCALER_SKIPPED, wire.STEP_TIME,
                        wire.DATA_WAIT, wire.DATA_WAIT_SHARE, wire.CPU_UTIL, wire.RSS})


def metric_name(name: str) -> str | None:
    """A framework's metric name as a txwatch series name ("val/acc" -> "val_acc"); None if unusable."""
    if name in _VAL_LOSS_ALIASES:
        return "val_loss"
    clean = _BAD.sub("_", name.replace("/", "_")).strip("_")[:100]
    if not clean or not (clean[0].isalpha() or clean[0] == "_"):
        return None
    return clean


def is_validation(name: str) -> bool:
    """A validation/evaluation metric by the frameworks' naming (``val_loss``, ``val/acc``, ``eval_f1``)."""
    return bool(_VALIDATION.match(name))


def training_metrics(items: Iterable[tuple[Any, Any]], skip: Iterable[str] = ()) -> dict[str, Any]:
    """A framework's logged training metrics as series ``{name: value}``, names cleaned (``metric_name``).

    Left out: the keys in ``skip``, validation metrics (the callbacks take those when evaluation ends), and
    names of series the hooks send themselves (``loss``, ``step_time``...), which the rules read as theirs.
    """
    skip = set(skip)
    values = {}
    for key, value in items:
        key = str(key)
        if key in skip or is_validation(key):
            continue
        name = metric_name(key)
        if name is not None and name not in OWN_SERIES:
            values[name] = value
    return values


def check_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate ``watch()`` keywords now (a typo fails when the callback is made, not mid-fit)."""
    own = {"run", "project", "config", "endpoint", "token", "scaler", "resume", "tags"}
    Options.from_kwargs({k: v for k, v in kwargs.items() if k not in own})
    check_scaler(kwargs.get("scaler"))
    if kwargs.get("resume") is not None:
        check_resume(kwargs["resume"])
    wire.check_tags(kwargs.get("tags"))
    return dict(kwargs)
