"""The collector's HTTP API: ingest, queries, silences, health and metrics, over the services built by the daemon.

The composition root (``txwatch.collector.app``) adds the web page's routes, which sit above this layer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from txwatch import telemetry
from txwatch.api import errors
from txwatch.api.deps import Services
from txwatch.api.models import ERRORS

log = logging.getLogger(__name__)

API_VERSION = "1"


def create_api(services: Services, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The FastAPI app over ``services`` (kept in ``app.state.services``), with ``routers`` included last.

    Every ``/api`` route checks the bearer token when one is configured.
    """
    from txwatch.api import health, ingest, runs, silences
    from txwatch.api.run_metrics import RUN_EXPORTER

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        RUN_EXPORTER.attach(services)
        try:
            yield
        finally:
            RUN_EXPORTER.detach(services)

    app = FastAPI(
        title="txwatch collector",
        version=API_VERSION,
        description="Stores training runs' metrics, diagnoses them, and answers questions about them.",
        default_response_class=errors.NaNJSONResponse,
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(ContentLengthLimit, limit=services.settings.max_body_bytes)
    if services.settings.is_loopback() and services.settings.token is None:
        from txwatch.api.hosts import LocalOnly

        app.add_middleware(LocalOnly, public_url=services.settings.public_url)
    app.add_exception_handler(RequestValidationError, errors.request_validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_exception_handler)
    app.add_exception_handler(DataError, errors.data_error_handler)
    app.add_exception_handler(OperationalError, errors.database_down_handler)
    app.include_router(ingest.router)
    app.include_router(runs.router)
    app.include_router(health.router)
    for router in (silences.router, *routers):
        # every /api route answers these (token, unknown ids, bad fields, database away): document them
        app.include_router(router, responses=ERRORS)

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                ingest.batch_component_schemas()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


class ContentLengthLimit:
    """Refuse (413) any request whose declared Content-Length passes ``limit``, before reading its body.

    Ingest also stream-limits bodies sent without a length (``txwatch.api.ingest.read_limited``).
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    if scope.get("path") == "/api/v1/ingest":
                        telemetry.BATCHES_REJECTED.labels("too_large").inc()
                    response = errors.error_response(
                        413,
                        f"request body larger than {self.limit} bytes (max_body_bytes): send smaller batches "
                        "(the hooks split them) or raise TXWATCH_MAX_BODY_BYTES",
                        [{"field": "(body)", "problem": f"more than {self.limit} bytes"}],
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
