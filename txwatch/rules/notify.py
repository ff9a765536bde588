"""What the engine tells when a diagnosis fires, updates or resolves.

The engine calls ``notifier.record(session, diagnosis_row, kind)`` inside the transaction that wrote the row, so
the notification (an outbox row, for the alerts' notifier) is stored if and only if the diagnosis is.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

KINDS = ("fire", "update", "resolve")


class Notifier(Protocol):
    def record(self, session: Any, diagnosis: Any, kind: str) -> None:
        """Record that ``diagnosis`` (a ``txwatch.store.models.Diagnosis`` row) had a ``kind`` transition."""


class NullNotifier:
    """Tells no one."""

    def record(self, session: Any, diagnosis: Any, kind: str) -> None:
        return None


@dataclass(frozen=True)
class Recorded:
    kind: str
    run_id: int
    rule_id: str
    layer: str
    episode: int
    state: str
    reason: str


class RecordingNotifier:
    """Keeps what it was told in memory (thread-safe): for tests, the demo and embedded use without alerts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[Recorded] = []

    def record(self, session: Any, diagnosis: Any, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}; expected one of {KINDS}")
        with self._lock:
            self.records.append(
                Recorded(
                    kind=kind,
                    run_id=diagnosis.run_id,
                    rule_id=diagnosis.rule_id,
                    layer=diagnosis.layer,
                    episode=diagnosis.episode,
                    state=diagnosis.state,
                    reason=diagnosis.reason,
                )
            )

    def kinds(self, rule_id: str | None = None) -> list[str]:
        with self._lock:
            return [r.kind for r in self.records if rule_id is None or r.rule_id == rule_id]
