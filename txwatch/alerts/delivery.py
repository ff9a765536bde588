"""What the dispatcher hands a sink (claimed rows), what a sink answers (a Result per row), and the ledger of
earlier notifications a sink may consult (Slack threads replies under the episode's first message)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from txwatch.alerts.clock import iso
from txwatch.store.models import Diagnosis, Notification


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
    name: str

    def batches(self, rows: list[Claimed]) -> list[list[Claimed]]:
        """Split claimed rows into deliveries (Slack groups fires of one run into one message)."""

    def deliver(self, rows: list[Claimed], ledger: Ledger) -> dict[int, Result]:
        """Send one delivery; a Result for every row id. Must not raise for delivery problems."""

    def close(self) -> None: ...


@dataclass
class EpisodeRow:
    id: int
    kind: str
    status: str
    external_ref: dict[str, Any] | None
    payload: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """Reads of the outbox that sinks need while delivering (each in its own short transaction)."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self.session_factory = session_factory

    def episode_rows(self, diagnosis_id: int | None, sink: str, target: str) -> list[EpisodeRow]:
        if diagnosis_id is None:
            return []
        with self.session_factory() as s:
            rows = s.execute(
                select(Notification.id, Notification.kind, Notification.status, Notification.external_ref)
                .where(Notification.diagnosis_id == diagnosis_id, Notification.sink == sink, Notification.target == target)
                .order_by(Notification.id)
            ).all()
        return [EpisodeRow(r.id, r.kind, r.status, r.external_ref) for r in rows]

    def anchor(self, row: Claimed) -> tuple[dict[str, Any] | None, bool]:
        """(the episode's top-level message ref, or its incident's thread when it fired as a reply there (marked
        ``joined``), or None; whether an earlier message is still being sent)."""
        rows = self.episode_rows(row.diagnosis_id, row.sink, row.target)
        for r in rows:
            ref = r.external_ref or {}
            if r.status == "sent" and (ref.get("ts") or ref.get("webhook")) and not ref.get("thread_ts"):
                return ref, False
            if r.status == "sent" and r.kind == "fire" and ref.get("joined") and ref.get("thread_ts"):
                # it fired as a reply in its incident's thread: follow-ups go to that thread too
                return {"channel": ref.get("channel"), "ts": ref["thread_ts"], "joined": True}, False
        waiting = any(
            r.id < row.id and r.kind in ("fire", "update") and r.status in ("pending", "sending") for r in rows
        )
        return None, waiting

    def incident_thread(self, diagnosis_id: int, sink: str, target: str) -> tuple[dict[str, Any] | None, bool]:
        """(the top-level message ref of the diagnosis that opened an incident, or None; whether it is still
        being sent)."""
        rows = [r for r in self.episode_rows(diagnosis_id, sink, target) if r.kind == "fire"]
        for r in rows:
            ref = r.external_ref or {}
            if r.status == "sent" and ref.get("ts") and not ref.get("thread_ts"):
                return ref, False
        return None, any(r.status in ("pending", "sending") for r in rows)

    def group_view(self, diagnosis_ids: list[int], sink: str, target: str) -> list[dict[str, Any]]:
        """The fire payloads of a grouped message, each with its diagnosis's current state (for re-rendering)."""
        with self.session_factory() as s:
            fires = s.scalars(
                select(Notification).where(
                    Notification.diagnosis_id.in_(diagnosis_ids),
                    Notification.sink == sink,
                    Notification.target == target,
                    Notification.kind == "fire",
                ).order_by(Notification.id)
            ).all()
            states = {d.id: d for d in s.scalars(select(Diagnosis).where(Diagnosis.id.in_(diagnosis_ids)))}
        out = []
        for f in fires:
            payload = {**f.payload, "diagnosis": dict(f.payload["diagnosis"])}
            d = states.get(f.diagnosis_id)
            if d is not None:
                payload["diagnosis"].update(
                    state=d.state, resolved_step=d.resolved_step, resolved_at=iso(d.resolved_at), last_step=d.last_step
                )
            out.append(payload)
        return out

    def known_channel_id(self, sink: str, target: str) -> str | None:
        """The channel ID Slack answered for ``target`` on an earlier message (targets may be #names)."""
        with self.session_factory() as s:
            refs = s.scalars(
                select(Notification.external_ref)
                .where(Notification.sink == sink, Notification.target == target, Notification.status == "sent")
                .order_by(Notification.id.desc())
                .limit(20)
            ).all()
        for ref in refs:
            if ref and ref.get("channel"):
                return ref["channel"]
        return None


__all__ = ["Claimed", "Result", "Sink", "Ledger", "EpisodeRow", "sent", "retry", "failed", "defer", "skipped"]
