"""GET /healthz (the process answers), /readyz (database reachable, migrations current), /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from txwatch.api.deps import Services, get_services
from txwatch.api.errors import NaNJSONResponse
from txwatch.api.models import Health
from txwatch.store.db import OneAtATime
from txwatch.telemetry import REGISTRY

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="Liveness: the daemon answers")
async def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: database reachable and answering, migrations current, the last batch written",
    responses={503: {"model": Health, "description": "not ready; detail says why"}},
)
async def readyz(services: Services = Depends(get_services)):
    from txwatch.store.db import DatabaseStuck, current_revision, head_revision, redact

    def check():
        try:
            current = _READY_CHECK.call(lambda: current_revision(services.db), services.settings.db_timeout_s)
        except DatabaseStuck as exc:
            return f"database {redact(str(services.db.url))} not answering: {exc}"
        except Exception as exc:
            return f"database {redact(str(services.db.url))} unreachable: {exc.__class__.__name__}"
        head = head_revision()
        if current != head:
            return f"database schema at {current or 'nothing'}, expected {head}: run `txwatch db upgrade`"
        return getattr(services.collector, "write_problem", None)  # readable is not enough: the last batch failed

    problem = await run_in_threadpool(check)
    if problem:
        return NaNJSONResponse({"status": "unavailable", "detail": problem}, status_code=503)
    return {"status": "ok"}


_READY_CHECK = OneAtATime("readyz")


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
async def metrics():
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
