"""How values that databases mishandle are stored: NaN as NULL.

SQLite turns a bound NaN into NULL without a word, so both databases store NaN as NULL in value columns and
read NULL back as NaN (only where a value is known to exist, e.g. a point row). +/-Inf round-trip in both.
"""

from __future__ import annotations

NAN = float("nan")


def encode(value: float) -> float | None:
    """The stored form of a value: None for NaN, the value otherwise."""
    return None if value != value else value  # NaN is the only float unequal to itself


def decode(stored: float | None) -> float:
    """The value of a stored (non-missing) cell: NULL means NaN."""
    return NAN if stored is None else stored
