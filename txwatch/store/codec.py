"""How values that databases mishandle are stored: NaN as NULL.

SQLite turns a bound NaN into NULL without a word, so both databases store NaN as NULL in value columns and
read NULL back as NaN (only where a value is known to exist, e.g. a point row). +/-Inf round-trip in both.
"""

from __future__ import annotations

import math
from typing import Any

NAN = float("nan")


def encode(value: float) -> float | None:
    """The stored form of a value: None for NaN, the value otherwise."""
    return None if value != value else value  # NaN is the only float unequal to itself


def decode(stored: float | None) -> float:
    """The value of a stored (non-missing) cell: NULL means NaN."""
    return NAN if stored is None else stored


def json_safe(value: Any) -> Any:
    """``value`` for a JSON column or message: NaN and infinities as the strings "NaN", "Infinity" and
    "-Infinity" (PostgreSQL's JSON types, strict JSON parsers and Slack refuse the bare literals), keys as
    strings, tuples as lists, anything else that JSON has no type for as its ``str``."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
