"""The ledger: reads of the outbox that a sink may consult while delivering (Slack threads replies under the
episode's first message, re-renders a grouped message, remembers a channel's ID)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from txwatch.alerts.clock import iso
from txwatch.alerts.sinks.protocol import Claimed
from txwatch.store.models import Diagnosis, Notification


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
            d = states.get(f.diagnosis_id) if f.diagnosis_id is not None else None
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
                return str(ref["channel"])
        return None


__all__ = ["EpisodeRow", "Ledger"]
