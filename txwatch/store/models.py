"""SQLAlchemy 2.x typed models: the run history.

The schema is owned by the Alembic migrations in ``txwatch/store/migrations``; these models describe it for
queries. Change both together (a new migration per change, never an edit of a released one).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime

NAME_LEN = 200
RUN_LAYER_NONE = ""  # diagnoses that are not about one layer store "" so the unique key holds in every database


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    created: Mapped[datetime]

    runs: Mapped[list[Run]] = relationship(back_populates="project")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_runs_project_name"),
        Index("ix_runs_started", "started"),
        Index("ix_runs_status", "status"),
        Index("ix_runs_name", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)  # host, pid, world_size, versions, device
    host: Mapped[str | None] = mapped_column(String(255))
    # running | finished | crashed | stalled | vanished
    status: Mapped[str] = mapped_column(String(20), default="running")
    started: Mapped[datetime]
    ended: Mapped[datetime | None]
    last_seen: Mapped[datetime]  # last batch or heartbeat
    steps: Mapped[int] = mapped_column(BigInteger, default=0)  # highest step seen
    # how it ended: finished | crashed | oom | stalled | vanished, and the exception for crashes
    end_reason: Mapped[str | None] = mapped_column(String(20))
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    end_memory: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    client_stats: Mapped[dict[str, Any]] = mapped_column(default=dict)  # drops counted by the hooks

    project: Mapped[Project] = relationship(back_populates="runs")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_series_run_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_LEN * 2))
    points: Mapped[int] = mapped_column(BigInteger, default=0)  # count, kept up to date at ingest
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    last_value: Mapped[float | None] = mapped_column(Double)
    downsampled_before: Mapped[int | None] = mapped_column(BigInteger)  # retention thinned steps below this


class Point(Base):
    __tablename__ = "points"

    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    time: Mapped[float] = mapped_column(Double)  # unix seconds, as sent
    value: Mapped[float] = mapped_column(Double)  # NaN and +/-Inf kept as they are


class Batch(Base):
    """One accepted batch: the idempotency record for (run, rank, seq)."""

    __tablename__ = "batches"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received: Mapped[datetime]
    points: Mapped[int] = mapped_column(Integer)


class Diagnosis(Base):
    __tablename__ = "diagnoses"
    __table_args__ = (
        UniqueConstraint("run_id", "rule_id", "layer", "episode", name="uq_diagnoses_episode"),
        Index("ix_diagnoses_state", "state"),
        Index("ix_diagnoses_rule", "rule_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    rule_id: Mapped[str] = mapped_column(String(100))
    layer: Mapped[str] = mapped_column(String(NAME_LEN * 2), default=RUN_LAYER_NONE)
    episode: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(10))  # pending | firing | resolved
    severity: Mapped[str] = mapped_column(String(10))  # info | warning | critical
    symptom: Mapped[str] = mapped_column(Text)
    cause: Mapped[str] = mapped_column(Text)
    fix: Mapped[list[Any]] = mapped_column(default=list)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")  # one human sentence: metric, value, threshold
    first_step: Mapped[int | None] = mapped_column(BigInteger)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    resolved_step: Mapped[int | None] = mapped_column(BigInteger)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    resolved_at: Mapped[datetime | None]


class Notification(Base):
    """The outbox: a notification decided is a row here before anything is sent."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(400), unique=True)  # idempotent on the episode and kind
    diagnosis_id: Mapped[int | None] = mapped_column(ForeignKey("diagnoses.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # fire | update | resolve | digest
    sink: Mapped[str] = mapped_column(String(50))  # slack | webhook | alertmanager | console
    target: Mapped[str | None] = mapped_column(String(255))  # channel or URL name
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending|sending|sent|failed|silenced
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime]
    created: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    external_ref: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # e.g. Slack channel + ts of the message
    error: Mapped[str | None] = mapped_column(Text)


class Silence(Base):
    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str | None] = mapped_column(String(NAME_LEN))
    run: Mapped[str | None] = mapped_column(String(NAME_LEN))
    rule_id: Mapped[str | None] = mapped_column(String(100))
    created: Mapped[datetime]
    expires: Mapped[datetime]
    comment: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(100), default="")


class EngineState(Base):
    """Saved rule-engine trackers for one run, so a restarted collector resumes where it left off."""

    __tablename__ = "engine_state"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(BigInteger, default=0)  # bumped on each save; replicas reload when it moved
    updated: Mapped[datetime]
