"""The sink protocol: what the dispatcher hands a sink (claimed rows) and what a sink answers (a Result per row).

A sink is one module under ``txwatch/alerts/sinks/`` and one entry in the registry there
(``txwatch.alerts.sinks.SINKS``). It may consult the ``Ledger`` of earlier notifications while delivering (Slack
threads replies under the episode's first message)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from txwatch.alerts.ledger import Ledger
    from txwatch.settings import Settings


@dataclass
class Claimed:
    """One notification row claimed by this dispatcher (status "sending" in the database)."""

    id: int
    dedupe_key: str
    diagnosis_id: int | None
    run_id: int | None
    kind: str
    sink: str
    target: str
    payload: dict[str, Any]
    attempts: int  # including this one
    created: datetime

    @property
    def maybe_sent(self) -> bool:
        """An earlier attempt may have reached the receiver (it timed out, or its dispatcher died mid-send)."""
        return self.attempts > 1


@dataclass
class Result:
    """How one row's delivery went. ``reason`` is a short code (metrics label), ``detail`` a sentence (no secrets)."""

    status: str  # sent | retry | failed | defer | silenced
    ref: dict[str, Any] | None = None
    reason: str = ""
    detail: str = ""
    retry_after_s: float | None = None


def sent(ref: dict[str, Any] | None = None) -> Result:
    return Result("sent", ref=ref)


def retry(reason: str, detail: str, retry_after_s: float | None = None) -> Result:
    return Result("retry", reason=reason, detail=detail, retry_after_s=retry_after_s)


def failed(reason: str, detail: str) -> Result:
    return Result("failed", reason=reason, detail=detail)


def defer(detail: str) -> Result:
    """Not now, and not an attempt: e.g. an update whose episode's first message is still being sent."""
    return Result("defer", detail=detail)


def skipped(detail: str) -> Result:
    """Nothing to send after all (e.g. a resolve for an episode nobody was told about); final, stored as silenced."""
    return Result("silenced", detail=detail)


class Sink(Protocol):
    """What the dispatcher delivers through. ``name`` is the sink's registered name (the outbox rows' ``sink``)."""

    name: str

    def batches(self, rows: list[Claimed]) -> list[list[Claimed]]:
        """Split claimed rows into deliveries (Slack groups fires of one run into one message)."""
        ...

    def deliver(self, rows: list[Claimed], ledger: Ledger) -> dict[int, Result]:
        """Send one delivery; a Result for every row id. Must not raise for delivery problems."""
        ...

    def close(self) -> None:
        """Release the sink's HTTP clients; called once at shutdown."""
        ...


# A scheduler job: (job id, callable, APScheduler ``add_job`` keyword arguments).
Job = tuple[str, Callable[[], object], dict[str, Any]]


@runtime_checkable
class ScheduledSink(Sink, Protocol):
    """A sink with background work of its own (Alertmanager re-pushes firing alerts before they expire)."""

    def jobs(self, session_factory: sessionmaker[Session]) -> list[Job]:
        """The sink's scheduler jobs."""
        ...


class SinkFactory(Protocol):
    """A sink module's ``from_settings``: the sink for these settings (the registry calls it only when the
    sink is configured). Raises ``AlertConfigError`` for settings that cannot work."""

    def __call__(self, settings: Settings, *, timeout_s: float) -> Sink: ...


__all__ = ["Claimed", "Job", "Result", "ScheduledSink", "Sink", "SinkFactory", "sent", "retry", "failed", "defer", "skipped"]
