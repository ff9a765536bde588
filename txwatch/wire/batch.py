"""The ingest batch, as validated by the collector (see docs/design.md, "Wire format")."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

SCHEMA_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+=\-]{0,199}$"
# A metric name: a base name, optionally "/<layer>" where the layer is a parameter's qualified name.
METRIC_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,99}(/[A-Za-z0-9_.:\-/\[\]]{1,300})?$"
MAX_SERIES_PER_BATCH = 20_000
MAX_POINTS_PER_SERIES = 100_000
MAX_EVENTS_PER_BATCH = 1_000

# Wall-clock times stored as timestamps must fit a datetime: 0 .. year 5138 (1e11 s)
MAX_TIMESTAMP = 1e11
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP)]

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
# A run tag (``watch(tags=[...])``, ``txwatch tag``): a word a filter can quote, at most MAX_TAGS per run
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+=/\-]{0,99}$"
MAX_TAGS = 100
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
MetricName = Annotated[str, StringConstraints(pattern=METRIC_PATTERN)]
# [step, time, value]; value may be NaN or +/-Inf (a symptom, not bad input); time is a Timestamp like any other
# (unbounded, 1e300 or -5 was stored and then broke every reader that turns it into a datetime)
PointTriple = tuple[Annotated[int, Field(ge=0, le=2**62)], Timestamp, float]


def _storable(value: Any) -> Any:
    """``value`` with text no database stores (NUL, unpaired UTF-16 surrogates) replaced by U+FFFD.

    Replaced rather than refused: a host name or error message with a stray byte is still worth keeping,
    and refusing would drop the whole batch. Small nested data only (run info, events, client stats).
    """
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
        return value
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


class _TextChecked(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        return _storable(data) if isinstance(data, dict) else data


class RunInfo(_TextChecked):
    model_config = ConfigDict(extra="allow")

    config: dict[str, Any] = Field(default_factory=dict)
    host: str | None = Field(default=None, max_length=255)
    pid: int | None = Field(default=None, ge=0, le=2**62)
    world_size: int = Field(default=1, ge=1, le=1_000_000)
    started: Timestamp | None = None
    hooks_version: str | None = Field(default=None, max_length=50)
    torch_version: str | None = Field(default=None, max_length=50)
    device: str | None = Field(default=None, max_length=50)
    job: str | None = Field(default=None, max_length=300)  # the job's id: watch(resume=) tells jobs apart
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)  # added to the run's tags, never removed
    # The model's parameter names in ``named_parameters()`` order: the layer heatmap's rows read input ->
    # output. Bounded like the layer part of a metric name; the hooks send at most the first 10,000.
    layers: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-/\[\]]{1,300}$")]] | None = Field(
        default=None, max_length=10_000
    )


class ErrorInfo(_TextChecked):
    type: str = Field(max_length=255)
    message: str = Field(default="", max_length=10_000)


class Event(_TextChecked):
    kind: Literal["start", "heartbeat", "end"]
    time: Timestamp
    step: int | None = Field(default=None, ge=0, le=2**62)
    status: Literal["finished", "crashed", "oom"] | None = None
    error: ErrorInfo | None = None
    memory: dict[str, dict[str, float]] | None = None

    @field_validator("time")
    @classmethod
    def _finite_time(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("event time must be a finite unix timestamp in seconds")
        return v


class ClientStats(_TextChecked):
    model_config = ConfigDict(extra="allow")

    dropped: dict[str, int] = Field(default_factory=dict)
    spooled_batches: int = 0


class Batch(BaseModel):
    """One batch from the hooks. Idempotent by (project, run, rank, seq)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1]
    run: Name
    project: Name = "default"
    seq: int = Field(ge=0, le=2**62)
    rank: int = Field(default=0, ge=0, le=1_000_000)
    sent_at: float | None = None
    run_info: RunInfo | None = None
    series: dict[MetricName, list[PointTriple]] = Field(
        default_factory=dict,
        max_length=MAX_SERIES_PER_BATCH,
        json_schema_extra={"additionalProperties": False},  # names must match the pattern (OpenAPI says so too)
    )
    events: list[Event] = Field(default_factory=list, max_length=MAX_EVENTS_PER_BATCH)
    client: ClientStats | None = None

    @field_validator("series")
    @classmethod
    def _bounded_series(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, points in v.items():
            if len(points) > MAX_POINTS_PER_SERIES:
                raise ValueError(
                    f"series {name!r} has {len(points)} points; at most {MAX_POINTS_PER_SERIES} per batch"
                )
        return v

    def point_count(self) -> int:
        return sum(len(p) for p in self.series.values())
