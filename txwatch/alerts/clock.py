"""UTC time helpers: every time the alerts code stores or compares is timezone-aware UTC.

Stored times come back aware UTC (``txwatch.store.models.UTCDateTime``); ``as_utc`` (the store's one UTC
function) makes a time from elsewhere comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from txwatch.store.models import as_utc

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)




def iso(value: datetime | None) -> str | None:
    """ISO 8601 with a ``Z`` (what Alertmanager and most webhook receivers parse)."""
    v = as_utc(value)
    return None if v is None else v.isoformat().replace("+00:00", "Z")


def human(value: datetime | None) -> str:
    """``2025-11-29 05:12 UTC``: for people reading a message."""
    v = as_utc(value)
    return "" if v is None else v.strftime("%Y-%m-%d %H:%M UTC")
