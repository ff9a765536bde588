"""A rule: what a rule file holds (validated with pydantic) and its compiled form."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from txwatch.rules.compiler import Program

RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,99}$"
SEVERITIES = ("info", "warning", "critical")
_HOLD_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(steps?|ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Hold:
    """How long something must last: a number of steps, or seconds (of the run's own clock)."""

    steps: int = 0
    seconds: float = 0.0

    @property
    def zero(self) -> bool:
        return self.steps == 0 and self.seconds == 0

    def satisfied(self, since_step: int, since_time: float, step: int, time: float) -> bool:
        if self.seconds:
            return time - since_time >= self.seconds
        return step - since_step >= self.steps

    def __str__(self) -> str:
        if self.seconds:
            return f"{self.seconds:g}s"
        return f"{self.steps} steps" if self.steps else "0"


def parse_hold(value: Any, what: str = "for") -> Hold:
    """``20`` or ``"20 steps"`` -> 20 steps; ``"30s"``, ``"5m"``, ``"1h"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of steps (20) or a duration (30s, 5m), not {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != int(value):
            raise ValueError(f"{what} must be a whole, non-negative number of steps, got {value!r}")
        return Hold(steps=int(value))
    if isinstance(value, str):
        m = _HOLD_RE.match(value)
        if m:
            num, unit = float(m.group(1)), m.group(2)
            if unit is None or unit.startswith("step"):
                if num != int(num):
                    raise ValueError(f"{what} counts whole steps, got {value!r}")
                return Hold(steps=int(num))
            return Hold(seconds=num * _UNIT_S[unit])
    raise ValueError(f"{what} must be a number of steps (20) or a duration (30s, 5m, 1h), got {value!r}")


class ResolveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    condition: str | None = None  # resolves when this holds; default: when the firing condition stops holding
    for_: Any = Field(default=None, alias="for")

    @field_validator("condition")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("resolve condition is empty: remove it or write a test")
        return v


class RuleSpec(BaseModel):
    """The fields of a rule file, validated."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(pattern=RULE_ID_PATTERN)
    symptom: str = Field(min_length=1, max_length=300)
    cause: str = Field(min_length=1, max_length=2000)
    fix: list[str] = Field(min_length=1)
    severity: Literal["info", "warning", "critical"]
    condition: str = Field(min_length=1)
    for_: Any = Field(default=0, alias="for")
    resolve: ResolveSpec | None = None
    scope: Literal["run", "layer"] = "run"
    labels: dict[str, str] = Field(default_factory=dict)
    reason: str | None = Field(default=None, max_length=500)  # a template: {expression}, {layer}, {layers}, {step}

    @field_validator("fix", mode="before")
    @classmethod
    def _fix_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("fix")
    @classmethod
    def _fix_steps(cls, v: list[str]) -> list[str]:
        if any(not isinstance(s, str) or not s.strip() for s in v):
            raise ValueError("every fix step must be a non-empty sentence")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_str(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): (str(x) if isinstance(x, (int, float, bool)) else x) for k, x in v.items()}
        return v

    @field_validator("for_")
    @classmethod
    def _for_hold(cls, v: Any) -> Any:
        parse_hold(v, "for")
        return v

    @model_validator(mode="after")
    def _resolve_hold(self) -> RuleSpec:
        if self.resolve is not None and self.resolve.for_ is not None:
            parse_hold(self.resolve.for_, "resolve for")
        return self


@dataclass(frozen=True)
class TemplatePart:
    """A piece of a reason template: literal text, or an expression/placeholder to fill in."""

    text: str
    program: Program | None = None  # an expression
    placeholder: str | None = None  # layer | layers | step


@dataclass(eq=False)
class Rule:
    """A loaded, checked and compiled rule."""

    id: str
    symptom: str
    cause: str
    fix: list[str]
    severity: str
    condition: str
    hold: Hold
    resolve_condition: str | None
    resolve_hold: Hold
    scope: str
    labels: dict[str, str]
    reason_template: str | None
    program: Program = field(repr=False)
    resolve_program: Program | None = field(default=None, repr=False)
    template: list[TemplatePart] = field(default_factory=list, repr=False)
    source: str | None = None  # file it came from
    line: int | None = None
    builtin: bool = False

    @property
    def time_based(self) -> bool:
        """Evaluated by the scheduler (it reads idle_s()), not on ingest."""
        return self.program.checked.time_based

    @property
    def reads_series(self) -> bool:
        return bool(self.program.checked.series) or bool(
            self.resolve_program and self.resolve_program.checked.series
        )

    def describe_hold(self) -> str:
        return str(self.hold)
