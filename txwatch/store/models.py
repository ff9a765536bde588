"""SQLAlchemy 2.x typed models: the run history.

The schema is owned by the Alembic migrations in ``txwatch/store/migrations``; these models describe it for
queries. Change both together (a new migration per change, never an edit of a released one).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime, TypeDecorator

NAME_LEN = 200
RUN_LAYER_NONE = ""  # diagnoses that are not about one layer store "" so the unique key holds in every database
# diagnoses not resolved: still firing, or closed as ended because their run ended while they were firing
OPEN_STATES = ("firing", "ended")


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime; a naive one is taken to be UTC already (SQLite stores no zone)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` column that always hands back aware UTC datetimes, on SQLite as on
    PostgreSQL, and stores UTC. The column type underneath is unchanged, so no migration is needed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


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
    last_value: Mapped[float | None] = mapped_column(Double)  # NULL with a last_step means NaN
    last_time: Mapped[float | None] = mapped_column(Double)
    downsampled_before: Mapped[int | None] = mapped_column(BigInteger)  # retention thinned steps below this


class Point(Base):
    """One value of one series at one step.

    NaN is stored as NULL: SQLite silently turns a bound NaN into NULL, so both databases use NULL for NaN
    (``txwatch.store.codec``) and aggregates behave the same in both. +/-Inf are stored as they are.
    No foreign key to ``series``: a per-row key check costs 2.5x ingest time on PostgreSQL, and the collector
    always creates the series row first (``txwatch.store.ingest``); deleting a run deletes its points explicitly.
    On SQLite the table is WITHOUT ROWID, clustered on (series_id, step) like the queries read it.
    """

    __tablename__ = "points"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    time: Mapped[float] = mapped_column(Double)  # unix seconds, as sent
    value: Mapped[float | None] = mapped_column(Double)  # NULL means NaN; +/-Inf kept as they are


class Rollup(Base):
    """Min/max summary of one block of steps of one series, kept up to date at ingest.

    Level ``L`` covers steps ``[block * L, (block + 1) * L)``. Downsampled reads of long series read these
    instead of millions of raw points; retention keeps them when it thins raw points.
    """

    __tablename__ = "rollups"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)  # block width in steps (16, 256, 4096)
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)  # points in the block, NaN included
    nans: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(BigInteger)
    last_step: Mapped[int] = mapped_column(BigInteger)
    nan_step: Mapped[int | None] = mapped_column(BigInteger)  # first NaN in the block, so charts still show it
    nan_time: Mapped[float | None] = mapped_column(Double)
    vmin: Mapped[float | None] = mapped_column(Double)  # over non-NaN values; NULL when all are NaN
    vmin_step: Mapped[int | None] = mapped_column(BigInteger)
    vmin_time: Mapped[float | None] = mapped_column(Double)
    vmax: Mapped[float | None] = mapped_column(Double)
    vmax_step: Mapped[int | None] = mapped_column(BigInteger)
    vmax_time: Mapped[float | None] = mapped_column(Double)
    vsum: Mapped[float | None] = mapped_column(Double)  # sum of non-NaN values (means for the layer heatmap)


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
    state: Mapped[str] = mapped_column(String(10))  # pending | firing | resolved | ended (the run ended first)
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
