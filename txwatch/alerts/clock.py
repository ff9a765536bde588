"""UTC time helpers: every time the alerts code stores or compares is timezone-aware UTC.

SQLite hands back naive datetimes (it stores no zone), PostgreSQL aware ones; ``as_utc`` makes both comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC already)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with a ``Z`` (what Alertmanager and most webhook receivers parse)."""
    v = as_utc(value)
    return None if v is None else v.isoformat().replace("+00:00", "Z")


def human(value: datetime | None) -> str:
    """``2025-11-29 05:12 UTC``: for people reading a message."""
    v = as_utc(value)
    return "" if v is None else v.strftime("%Y-%m-%d %H:%M UTC")
