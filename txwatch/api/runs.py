"""Query routes: runs, one run, its series and points, the layer heatmap, incidents, diagnoses."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from txwatch.api.deps import Services, get_services, require_token
from txwatch.api.errors import RETRY_AFTER_S, NaNJSONResponse, error_response
from txwatch.api.models import (
    ERRORS,
    DiagnosisList,
    IncidentList,
    Layers,
    RunDetail,
    RunList,
    SeriesList,
    SeriesPoints,
)
from txwatch.api.models import TagChange, Tags
from txwatch.rules.incidents import Episode, group
from txwatch.rules.model import RULE_ID_PATTERN
from txwatch.store import downsample, queries, search, tags
from txwatch.store.models import RUN_LAYER_NONE, Diagnosis, Run
from txwatch.wire.batch import METRIC_PATTERN, NAME_PATTERN

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)], responses=ERRORS)

# "run" or "project/run", each part a NAME_PATTERN name
RUN_REF_PATTERN = "^(" + NAME_PATTERN[1:-1] + "/)?" + NAME_PATTERN[1:-1] + "$"
ProjectName = Annotated[str, Path(pattern=NAME_PATTERN, description="project name")]
RunName = Annotated[str, Path(pattern=NAME_PATTERN, description="run name")]
Status = Literal["running", "finished", "crashed", "stalled", "vanished"]
Severity = Literal["critical", "warning", "info"]
State = Literal["pending", "firing", "resolved", "ended"]


def _run(session, project: str, run: str):
    try:
        return queries.get_run(session, project, run)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/runs", response_model=RunList, summary="Runs, newest first")
async def list_runs(
    services: Services = Depends(get_services),
    project: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    status: Status | None = None,
    since: Annotated[datetime | None, Query(description="started at or after (ISO 8601 or unix seconds)")] = None,
    until: Annotated[datetime | None, Query(description="started at or before")] = None,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN, description="exact run name")] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_RUN_LIMIT)] = queries.DEFAULT_RUN_LIMIT,
    where: Annotated[str | None, Query(max_length=search.MAX_FILTER_CHARS, description=(
        "a filter, e.g. config.lr > 1e-3 and tags has 'sweep' and status == 'crashed' (docs/api.md)"))] = None,
    config: Annotated[bool, Query(description="add each run's config to its item")] = False,
):
    if where is not None:
        try:
            search.parse(where)
        except search.FilterError as exc:
            return error_response(400, f"where: {exc}")
    return await _read(services, lambda s: {
        "runs": queries.list_runs(s, project, status, since, until, name, limit, where=where, with_config=config)})


@router.post("/runs/{project}/{run}/tags", response_model=Tags, summary="Add and remove the run's tags")
async def change_tags(project: ProjectName, run: RunName, body: TagChange,
                      services: Services = Depends(get_services)):
    def work(s):
        r, _ = _run(s, project, run)
        try:
            return {"tags": tags.change(s, r.id, body.add, body.remove)}
        except tags.BadTag as exc:
            raise HTTPException(422, str(exc)) from None

    return await _read(services, work)


@router.get("/runs/{project}/{run}", response_model=RunDetail, summary="One run: config and summary")
async def get_run(project: ProjectName, run: RunName, services: Services = Depends(get_services)):
    def work(s):
        r, p = _run(s, project, run)
        return queries.run_detail(s, r, p)

    return await _read(services, work)


@router.get("/runs/{project}/{run}/series", response_model=SeriesList, summary="The run's series")
async def list_series(project: ProjectName, run: RunName, services: Services = Depends(get_services)):
    return await _read(services, lambda s: {"series": queries.list_series(s, _run(s, project, run)[0])})


@router.get(
    "/runs/{project}/{run}/series/{name:path}",
    response_model=SeriesPoints,
    summary="Points of one series, downsampled (min/max per bucket) past max_points",
)
async def series_points(
    project: ProjectName,
    run: RunName,
    name: Annotated[str, Path(pattern=METRIC_PATTERN, description="series name, e.g. loss or grad_norm/fc.weight")],
    services: Services = Depends(get_services),
    max_points: Annotated[int, Query(ge=2, le=downsample.MAX_MAX_POINTS)] = downsample.DEFAULT_MAX_POINTS,
    start: Annotated[int | None, Query(ge=0, le=2**62, description="first step")] = None,
    end: Annotated[int | None, Query(ge=0, le=2**62, description="last step")] = None,
    raw: Annotated[bool, Query(description="the first max_points raw points from start (for paging)")] = False,
):
    def work(s):
        r, p = _run(s, project, run)
        try:
            series = queries.get_series(s, r, name)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        if raw:
            out = downsample.raw_page(s, series, start or 0, end, max_points)
        else:
            out = downsample.series_points(s, series, max_points, start, end)
        return {"project": p, "run": r.name, "name": name, **out}

    return await _read(services, work)


@router.get("/runs/{project}/{run}/layers", response_model=Layers, summary="Heatmap: layers x step buckets")
async def layers(
    project: ProjectName,
    run: RunName,
    services: Services = Depends(get_services),
    metric: Annotated[str, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,99}$")] = "grad_norm",
    max_steps: Annotated[int, Query(ge=1, le=5000)] = 200,
):
    def work(s):
        r, _ = _run(s, project, run)
        return downsample.layer_heatmap(s, r.id, metric, max_steps, order=(r.info or {}).get("layers"))

    return await _read(services, work)


@router.get(
    "/runs/{project}/{run}/incidents",
    response_model=IncidentList,
    summary="The run's incidents: overlapping diagnoses, the root cause first",
)
async def incidents(project: ProjectName, run: RunName, services: Services = Depends(get_services)):
    return await _read(services, lambda s: {"incidents": run_incidents(s, _run(s, project, run)[0])})


@router.get("/diagnoses", response_model=DiagnosisList, summary="Diagnoses, newest first")
async def list_diagnoses(
    services: Services = Depends(get_services),
    project: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    run: Annotated[str | None, Query(pattern=RUN_REF_PATTERN, description="run name, or project/run")] = None,
    rule: Annotated[str | None, Query(pattern=RULE_ID_PATTERN, description="rule id, e.g. loss-nonfinite")] = None,
    severity: Severity | None = None,
    state: State | None = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_RUN_LIMIT)] = 1000,
):
    return await _read(
        services, lambda s: {"diagnoses": queries.list_diagnoses(s, project, run, rule, severity, state, limit)}
    )


async def _read(services: Services, query: Callable[[Session], Any]):
    """``query(session)`` in a worker thread (the database calls block), answered as JSON as is: NaN allowed,
    and no re-validation by FastAPI against the documented model.

    A database that does not answer within ``db_timeout_s`` gets a 503 with Retry-After; the read is left to
    finish on its own, and at most ``MAX_STUCK_READS`` such reads hold threads at once (the rest wait their turn,
    within the same time limit), so they can never take the threads ingest, /readyz and /metrics need."""

    def work():
        with services.session_factory() as session:
            return query(session)

    try:
        with anyio.fail_after(services.settings.db_timeout_s):
            result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=_limiter())
    except TimeoutError:
        return error_response(503, f"database not answering within {services.settings.db_timeout_s:g} s; retry "
                              "later", headers={"Retry-After": str(RETRY_AFTER_S)})
    return NaNJSONResponse(result)


MAX_STUCK_READS = 8
_LIMITERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its CapacityLimiter


def _limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    if loop not in _LIMITERS:
        _LIMITERS[loop] = anyio.CapacityLimiter(MAX_STUCK_READS)
    return _LIMITERS[loop]


def run_incidents(session: Session, run: Run) -> list[dict[str, Any]]:
    """The run's incidents (``txwatch.rules.incidents``): its diagnoses that overlap in time, root cause first."""
    rows = session.execute(
        select(Diagnosis).where(Diagnosis.run_id == run.id, Diagnosis.state != "pending").order_by(Diagnosis.id)
    ).scalars()
    episodes = [
        Episode(d.rule_id, d.severity, int(d.first_step or 0), d.resolved_step if d.state == "resolved" else None,
                "" if d.layer == RUN_LAYER_NONE else d.layer, d.reason, tuple(d.fix or ()), d.id)
        for d in rows
    ]
    out = [i.as_dict() for i in group(episodes)]
    if run.status != "running":  # what was still open when the run ended is not open any more
        for incident in out:
            if incident["state"] == "open":
                incident["state"] = "ended"
    return out
