"""Read-side queries of the run history, returning plain JSON-able dicts (NaN and Inf as floats).

The HTTP API and the CLI's ``--db`` mode both use these, so they print the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from txwatch.store import search
from txwatch.store.codec import NAN, decode
from txwatch.store.models import OPEN_STATES, Diagnosis, as_utc, Notification, Project, Run, RUN_LAYER_NONE, Series

DEFAULT_RUN_LIMIT = 100
MAX_RUN_LIMIT = 10_000
SEVERITIES = ("critical", "warning", "info")


class NotFound(LookupError):
    """A run or series that does not exist; the message names it."""


class Ambiguous(LookupError):
    """A run name that exists in several projects; the message lists them."""


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC."""
    utc = as_utc(dt)
    return None if utc is None else utc.isoformat()


aware = as_utc


def last_value(series: Series | Any) -> float | None:
    """The series' latest value (NaN when the latest point was NaN; None when it has no points)."""
    if series.last_step is None:
        return None
    return decode(series.last_value)


# -- runs ----------------------------------------------------------------------------------------------------


def list_runs(
    session: Session,
    project: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    name: str | None = None,
    limit: int = DEFAULT_RUN_LIMIT,
    where: str | None = None,
    with_config: bool = False,
) -> list[dict[str, Any]]:
    """Runs, newest first, with their tags, last loss and firing diagnoses by severity.

    ``where`` is a filter (``txwatch.store.search``; raises ``FilterError``): its plain-column tests narrow
    the rows in SQL, and the whole filter is evaluated over each run (config and info included) read in pages,
    until ``limit`` runs match. ``with_config`` adds each run's config to its item."""
    tree = search.parse(where) if where else None
    q = select(Run, Project.name).join(Project, Run.project_id == Project.id)
    if project:
        q = q.where(Project.name == project)
    if status:
        q = q.where(Run.status == status)
    if since:
        q = q.where(Run.started >= since)
    if until:
        q = q.where(Run.started <= until)
    if name:
        q = q.where(Run.name == name)
    for test in search.sql_tests(tree) if tree is not None else []:
        column = Project.name if test.field == "project" else getattr(Run, test.field)
        values = test.value if test.op == "in" else [test.value]
        q = q.where(column.in_([int(v) if test.field == "steps" else v for v in values]))
    q = q.order_by(Run.started.desc(), Run.id.desc())
    limit = max(1, min(limit, MAX_RUN_LIMIT))
    if tree is None:
        return _run_items(session, session.execute(q.limit(limit)).all(), with_config)
    out: list[dict[str, Any]] = []
    offset = 0
    while len(out) < limit:
        page = session.execute(q.offset(offset).limit(FILTER_PAGE)).all()
        for item, (run, _) in zip(_run_items(session, page, with_config), page):
            if search.matches(tree, item | {"config": run.config or {}, "info": run.info or {}}):
                out.append(item)
        if len(page) < FILTER_PAGE:
            break
        offset += FILTER_PAGE
    return out[:limit]


FILTER_PAGE = 500  # runs read at a time while a filter is evaluated over them


def _run_items(session: Session, rows: list[Any], with_config: bool = False) -> list[dict[str, Any]]:
    ids = [r.id for r, _ in rows]
    losses = _last_values(session, ids, "loss")
    firing = _firing(session, ids)
    return [
        _run_dict(run, project_name) | {"last_loss": losses.get(run.id), "firing": firing.get(run.id, _zero())}
        | ({"config": run.config or {}} if with_config else {})
        for run, project_name in rows
    ]


def find_run(session: Session, ref: str) -> tuple[Run, str]:
    """The run named ``ref`` ("project/run", or a run name unique across projects)."""
    project, sep, name = ref.partition("/")
    if not sep:
        project, name = None, ref
    q = select(Run, Project.name).join(Project, Run.project_id == Project.id).where(Run.name == name)
    if project is not None:
        q = q.where(Project.name == project)
    rows = session.execute(q).all()
    if not rows:
        raise NotFound(f"no run {ref!r}" + ("" if project else " in any project"))
    if len(rows) > 1:
        projects = ", ".join(sorted(p for _, p in rows))
        raise Ambiguous(f"run name {name!r} exists in several projects ({projects}); say which: PROJECT/{name}")
    return rows[0][0], rows[0][1]


def get_run(session: Session, project: str, name: str) -> tuple[Run, str]:
    return find_run(session, f"{project}/{name}")


def run_detail(session: Session, run: Run, project_name: str) -> dict[str, Any]:
    """One run: everything in the list item, plus config, info and a summary of latest values."""
    series = session.execute(
        select(Series.name, Series.last_step, Series.last_value, Series.points)
        .where(Series.run_id == run.id, ~Series.name.contains("/"))
        .order_by(Series.name)
    ).all()
    summary = {s.name: last_value(s) for s in series if s.last_step is not None}
    firing = _firing(session, [run.id]).get(run.id, _zero())
    diags = session.execute(
        select(Diagnosis.rule_id, Diagnosis.severity, Diagnosis.layer, Diagnosis.symptom, Diagnosis.first_step)
        .where(Diagnosis.run_id == run.id, Diagnosis.state.in_(OPEN_STATES))
        .order_by(Diagnosis.first_seen)
    ).all()
    return _run_dict(run, project_name) | {
        "config": run.config or {},
        "info": run.info or {},
        "client_stats": run.client_stats or {},
        "end_memory": run.end_memory,
        "last_loss": summary.get("loss"),
        "firing": firing,
        "summary": {
            "last_values": summary,
            "series": len(series),
            "firing_diagnoses": [
                {"rule": d.rule_id, "severity": d.severity, "layer": d.layer or None, "symptom": d.symptom,
                 "step": d.first_step}
                for d in diags
            ],
        },
    }


def _run_dict(run: Run, project_name: str) -> dict[str, Any]:
    started, ended = aware(run.started), aware(run.ended)
    end = ended or aware(run.last_seen)
    return {
        "name": run.name,
        "project": project_name,
        "status": run.status,
        "started": iso(started),
        "ended": iso(ended),
        "last_seen": iso(run.last_seen),
        "duration_s": (end - started).total_seconds() if end and started else None,
        "steps": run.steps,
        "host": run.host,
        "end_reason": run.end_reason,
        "tags": tags_of(run.info),
        "error": {"type": run.error_type, "message": run.error_message or ""} if run.error_type else None,
    }


def tags_of(info: dict[str, Any] | None) -> list[str]:
    tags = (info or {}).get("tags")
    return sorted(str(t) for t in tags) if isinstance(tags, list) else []


def _zero() -> dict[str, int]:
    return {s: 0 for s in SEVERITIES}


def _last_values(session: Session, run_ids: list[int], name: str) -> dict[int, float | None]:
    if not run_ids:
        return {}
    rows = session.execute(
        select(Series.run_id, Series.last_step, Series.last_value).where(
            Series.run_id.in_(run_ids), Series.name == name
        )
    ).all()
    return {r.run_id: last_value(r) for r in rows}


def _firing(session: Session, run_ids: list[int]) -> dict[int, dict[str, int]]:
    if not run_ids:
        return {}
    out: dict[int, dict[str, int]] = {}
    for run_id, severity, n in session.execute(
        select(Diagnosis.run_id, Diagnosis.severity, func.count())
        .where(Diagnosis.run_id.in_(run_ids), Diagnosis.state.in_(OPEN_STATES))
        .group_by(Diagnosis.run_id, Diagnosis.severity)
    ):
        out.setdefault(run_id, _zero())[severity] = n
    return out


# -- series --------------------------------------------------------------------------------------------------


def list_series(session: Session, run: Run) -> list[dict[str, Any]]:
    """The run's series: name, point count, last step and value, layer (the part after the first '/')."""
    rows = session.execute(
        select(Series.name, Series.points, Series.last_step, Series.last_value)
        .where(Series.run_id == run.id)
        .order_by(Series.id)
    ).all()
    out = []
    for r in rows:
        metric, _, layer = r.name.partition("/")
        out.append({
            "name": r.name, "metric": metric, "layer": layer or None, "points": r.points,
            "last_step": r.last_step, "last_value": last_value(r),
        })
    return out


def get_series(session: Session, run: Run, name: str) -> Series:
    s = session.execute(select(Series).where(Series.run_id == run.id, Series.name == name)).scalar_one_or_none()
    if s is None:
        raise NotFound(f"run {run.name!r} has no series {name!r}")
    return s


# -- diagnoses -----------------------------------------------------------------------------------------------


def list_diagnoses(
    session: Session,
    project: str | None = None,
    run: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    state: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Diagnoses, newest first. ``run`` is a run name or "project/run"."""
    q = (
        select(Diagnosis, Run.name, Project.name)
        .join(Run, Diagnosis.run_id == Run.id)
        .join(Project, Run.project_id == Project.id)
    )
    if run:
        p, sep, r = run.partition("/")
        if sep:
            q = q.where(Project.name == p, Run.name == r)
        else:
            q = q.where(Run.name == run)
    if project:
        q = q.where(Project.name == project)
    if rule:
        q = q.where(Diagnosis.rule_id == rule)
    if severity:
        q = q.where(Diagnosis.severity == severity)
    if state:
        q = q.where(Diagnosis.state == state)
    q = q.order_by(Diagnosis.first_seen.desc(), Diagnosis.id.desc()).limit(max(1, min(limit, MAX_RUN_LIMIT)))
    return [diagnosis_dict(d, run_name, project_name) for d, run_name, project_name in session.execute(q).all()]


def diagnosis_dict(d: Diagnosis, run_name: str, project_name: str) -> dict[str, Any]:
    return {
        "id": d.id,
        "rule": d.rule_id,
        "severity": d.severity,
        "state": d.state,
        "symptom": d.symptom,
        "cause": d.cause,
        "fix": d.fix,
        "reason": d.reason,
        "run": run_name,
        "project": project_name,
        "layer": None if d.layer == RUN_LAYER_NONE else d.layer,
        "step": d.first_step,
        "last_step": d.last_step,
        "resolved_step": d.resolved_step,
        "episode": d.episode,
        "first_seen": iso(d.first_seen),
        "last_seen": iso(d.last_seen),
        "resolved_at": iso(d.resolved_at),
        "labels": d.labels or {},
        "evidence": d.evidence or {},
    }


# -- the exporter's snapshot -------------------------------------------------------------------------------

EXPORTED_SCALARS = ("loss", "val_loss", "grad_norm_total", "update_ratio_max", "step_time", "data_wait_share",
                    "cpu_util", "rss")
EXPORTED_PREFIXES = ("gpu_util/", "gpu_mem_used/", "gpu_mem_total/", "cuda_mem_allocated/", "cuda_mem_reserved/",
                     "lr/")


@dataclass
class ExportSnapshot:
    runs: list[Any] = field(default_factory=list)
    values: dict[int, dict[str, float]] = field(default_factory=dict)
    firing: dict[int, dict[str, int]] = field(default_factory=dict)
    outbox_pending: int = 0


def export_snapshot(session: Session, ended_after: datetime, limit: int) -> ExportSnapshot:
    """Active runs (running/stalled, or ended after ``ended_after``) and their exportable latest values."""
    runs = session.execute(
        select(Run.id, Run.name, Run.status, Run.steps, Run.last_seen, Run.client_stats, Project.name.label("project"))
        .join(Project, Run.project_id == Project.id)
        .where(
            or_(
                Run.status.in_(("running", "stalled")),
                and_(Run.ended.is_not(None), Run.ended >= ended_after),
                and_(Run.ended.is_(None), Run.last_seen >= ended_after),
            )
        )
        .order_by(Run.last_seen.desc())
        .limit(limit)
    ).all()
    snap = ExportSnapshot(runs=[_Aware(r) for r in runs])
    ids = [r.id for r in runs]
    if ids:
        name_ok = or_(
            Series.name.in_(EXPORTED_SCALARS),
            *[Series.name.startswith(p) for p in EXPORTED_PREFIXES],
            Series.name.startswith("rank"),
        )
        for run_id, name, step, value in session.execute(
            select(Series.run_id, Series.name, Series.last_step, Series.last_value).where(
                Series.run_id.in_(ids), name_ok, Series.last_step.is_not(None)
            )
        ):
            snap.values.setdefault(run_id, {})[name] = NAN if value is None else value
        snap.firing = _firing(session, ids)
    snap.outbox_pending = session.execute(
        select(func.count()).select_from(Notification).where(Notification.status == "pending")
    ).scalar_one()
    return snap


class _Aware:
    """A run row whose last_seen is timezone-aware (SQLite returns naive UTC datetimes)."""

    def __init__(self, row):
        self.id, self.name, self.status, self.steps = row.id, row.name, row.status, row.steps
        self.client_stats, self.project = row.client_stats, row.project
        self.last_seen = aware(row.last_seen)
