"""Silences: "don't send diagnoses of this run / project / rule until then". Silenced diagnoses are still
recorded (and shown on the web page and by the CLI); their notifications are stored with status "silenced".

A silence names a run, a project, or both, and optionally a rule id; it matches a diagnosis when every field it
names is equal (a run given as ``project/run`` sets both). It ends at ``expires``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from txwatch.alerts.clock import as_utc, iso, utcnow
from txwatch.store.models import Silence

# Longest silence accepted: a forgotten silence should not hide a team's alerts for ever.
MAX_SILENCE = timedelta(days=90)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=\-]{0,199}$")


class SilenceError(ValueError):
    """A bad silence request; the message names the field and the fix."""


def parse_duration(text: str | float | int) -> timedelta:
    """``"2h"``, ``"90m"``, ``"1h30m"``, ``"1d"``, ``"45s"`` or a number of seconds -> a timedelta."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip()
        if re.fullmatch(r"\d+(\.\d+)?", raw):
            seconds = float(raw)
        else:
            compact = raw.replace(" ", "")
            parts = _DURATION_PART.findall(compact)
            if not parts or "".join(n + u for n, u in parts).lower() != compact.lower():
                raise SilenceError(
                    f"duration {text!r} not understood: use a number and a unit, like 30m, 2h, 1h30m, 1d or 1w"
                )
            seconds = sum(float(n) * _UNIT_S[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise SilenceError(f"duration {text!r} must be longer than zero")
    if seconds > MAX_SILENCE.total_seconds():
        raise SilenceError(f"duration {text!r} is longer than the limit of {MAX_SILENCE.days} days")
    return timedelta(seconds=seconds)


def split_run(run: str | None, project: str | None) -> tuple[str | None, str | None]:
    """``"proj/run"`` -> ("proj", "run"); checks both against the names the collector accepts."""
    if run and "/" in run:
        proj, _, name = run.partition("/")
        if project and project != proj:
            raise SilenceError(f"run {run!r} names project {proj!r} but --project is {project!r}; give one of them")
        project, run = proj, name
    for field, value in (("project", project), ("run", run)):
        if value is not None and not _NAME.match(value):
            raise SilenceError(
                f"{field} {value!r} is not a valid name: 1-200 characters of letters, digits and ._:@+=- "
                "(a run may be written project/run)"
            )
    return project, run


def add_silence(
    session: Session,
    *,
    run: str | None = None,
    project: str | None = None,
    rule: str | None = None,
    duration: str | float | timedelta,
    comment: str = "",
    created_by: str = "",
    now: datetime | None = None,
) -> Silence:
    """Add a silence (flushed, not committed). Raises ``SilenceError`` for bad input."""
    project, run = split_run(run or None, project or None)
    if run is None and project is None:
        raise SilenceError("say what to silence: a run (--run RUN or project/run) or a project (--project P)")
    if rule is not None and not _RULE_ID.match(rule):
        raise SilenceError(f"rule {rule!r} is not a rule id (like loss-diverging); see `txwatch rules list`")
    span = duration if isinstance(duration, timedelta) else parse_duration(duration)
    now = as_utc(now) or utcnow()
    silence = Silence(
        project=project,
        run=run,
        rule_id=rule or None,
        created=now,
        expires=now + span,
        comment=(comment or "")[:2000],
        created_by=(created_by or "")[:100],
    )
    session.add(silence)
    session.flush()
    return silence


def list_silences(session: Session, *, include_expired: bool = False, now: datetime | None = None) -> list[Silence]:
    """Silences, soonest to expire first (active ones only unless ``include_expired``)."""
    q = select(Silence).order_by(Silence.expires, Silence.id)
    if not include_expired:
        q = q.where(Silence.expires > (as_utc(now) or utcnow()))
    return list(session.scalars(q))


def remove_silence(session: Session, silence_id: int) -> bool:
    """Delete a silence; False when there is none with that id."""
    silence = session.get(Silence, silence_id)
    if silence is None:
        return False
    session.delete(silence)
    session.flush()
    return True


def matching_silence(
    session: Session, *, project: str, run: str, rule: str, now: datetime | None = None
) -> Silence | None:
    """The active silence that covers a diagnosis of ``rule`` on ``project/run``, if any."""
    q = (
        select(Silence)
        .where(Silence.expires > (as_utc(now) or utcnow()))
        .where(or_(Silence.project.is_(None), Silence.project == project))
        .where(or_(Silence.run.is_(None), Silence.run == run))
        .where(or_(Silence.rule_id.is_(None), Silence.rule_id == rule))
        .order_by(Silence.expires.desc())
        .limit(1)
    )
    return session.scalars(q).first()


def silence_dict(silence: Silence, now: datetime | None = None) -> dict[str, Any]:
    """A silence as JSON for the API and the CLI."""
    now = as_utc(now) or utcnow()
    expires = as_utc(silence.expires)
    return {
        "id": silence.id,
        "project": silence.project,
        "run": silence.run,
        "rule": silence.rule_id,
        "created": iso(silence.created),
        "expires": iso(expires),
        "active": expires > now,
        "comment": silence.comment,
        "created_by": silence.created_by,
    }


__all__ = [
    "MAX_SILENCE",
    "SilenceError",
    "add_silence",
    "list_silences",
    "matching_silence",
    "parse_duration",
    "remove_silence",
    "silence_dict",
    "split_run",
]
