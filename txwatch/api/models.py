"""Response shapes, for the OpenAPI document (the routes return these as plain JSON, NaN allowed)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from txwatch.wire.batch import MAX_TAGS, Tag


class ErrorDetail(BaseModel):
    field: str = Field(description="where: a dotted path into the body, e.g. series.loss.0.2")
    problem: str
    got: Any = None


class ErrorBody(BaseModel):
    error: str = Field(description="one line: what was wrong and how to fix it")
    details: list[ErrorDetail] | None = None


class IngestAck(BaseModel):
    accepted: bool
    duplicate: bool = Field(description="true when this (run, rank, seq) was stored before (a replay)")
    points: int


class Firing(BaseModel):
    critical: int = 0
    warning: int = 0
    info: int = 0


class RunError(BaseModel):
    type: str
    message: str


class RunItem(BaseModel):
    name: str
    project: str
    status: str = Field(description="running | finished | crashed | stalled | vanished")
    started: str | None
    ended: str | None
    last_seen: str | None
    duration_s: float | None
    steps: int
    host: str | None
    end_reason: str | None = Field(description="finished | crashed | oom | stalled | vanished")
    error: RunError | None
    last_loss: float | None = Field(description="NaN when the latest loss was NaN")
    firing: Firing
    tags: list[str] = Field(default_factory=list, description="sorted")
    config: dict[str, Any] | None = Field(default=None, description="the run's config, with config=true")


class RunList(BaseModel):
    runs: list[RunItem]


class TagChange(BaseModel):
    add: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    remove: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)


class Tags(BaseModel):
    tags: list[str]


class FiringDiagnosis(BaseModel):
    rule: str
    severity: str
    layer: str | None
    symptom: str
    step: int | None


class RunSummary(BaseModel):
    last_values: dict[str, float]
    series: int
    firing_diagnoses: list[FiringDiagnosis]


class RunDetail(RunItem):
    config: dict[str, Any]
    info: dict[str, Any]
    client_stats: dict[str, Any]
    end_memory: dict[str, Any] | None
    summary: RunSummary


class SeriesItem(BaseModel):
    name: str
    metric: str = Field(description="the part before the first '/'")
    layer: str | None = Field(description="the part after the first '/' (per-layer series)")
    points: int
    last_step: int | None
    last_value: float | None


class SeriesList(BaseModel):
    series: list[SeriesItem]


class Point(BaseModel):
    step: int
    time: float
    value: float = Field(description="NaN, Infinity and -Infinity are sent as those JSON literals")


class SeriesPoints(BaseModel):
    project: str
    run: str
    name: str
    downsampled: bool = Field(description="true when points are min/max (and first NaN) per step bucket")
    total: int = Field(description="points in the range (an upper bound when downsampled)")
    points: list[Point]


class Layers(BaseModel):
    metric: str
    layers: list[str]
    steps: list[int] = Field(description="first step of each bucket")
    bucket_steps: int | None = None
    values: list[list[float | None]] = Field(description="values[layer][bucket]: mean, NaN, or null (no data)")


class DiagnosisItem(BaseModel):
    id: int
    rule: str
    severity: str
    state: str
    symptom: str
    cause: str
    fix: list[Any]
    reason: str
    run: str
    project: str
    layer: str | None
    step: int | None = Field(description="the step at which it was first raised")
    last_step: int | None
    resolved_step: int | None
    episode: int
    first_seen: str | None
    last_seen: str | None
    resolved_at: str | None
    labels: dict[str, Any]
    evidence: dict[str, Any]


class DiagnosisList(BaseModel):
    diagnoses: list[DiagnosisItem]


class IncidentEpisode(BaseModel):
    rule: str
    severity: str
    first_step: int
    resolved_step: int | None
    layer: str | None
    reason: str
    id: int | None = Field(description="the diagnosis (GET /api/v1/diagnoses lists it)")


class IncidentItem(BaseModel):
    number: int = Field(description="1 for the run's first incident")
    first_step: int
    resolved_step: int | None
    state: Literal["open", "resolved", "ended"] = Field(description="ended: still open when the run ended")
    severity: str
    primary: IncidentEpisode | None = Field(description="the root cause, by the causal order (docs/rules.md)")
    fix: list[str] = Field(description="the root cause's fix, in order")
    note: str = Field(description="what the causal order concluded, in words")
    consequences: list[IncidentEpisode] = Field(description="what the root cause explains, by the causal order")
    concurrent: list[IncidentEpisode] = Field(description="open at the same time, not explained by the root cause")


class IncidentList(BaseModel):
    incidents: list[IncidentItem]


class Health(BaseModel):
    status: str
    detail: str | None = None


ERRORS = {
    400: {"model": ErrorBody, "description": "malformed request"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    404: {"model": ErrorBody, "description": "no such run or series"},
    422: {"model": ErrorBody, "description": "a field is wrong; details name it"},
    503: {"model": ErrorBody, "description": "database unavailable; retry later"},
}
