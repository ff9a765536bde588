"""Error bodies: ``{"error": "<one line>", "details": [{"field": "series.loss.0.2", "problem": "..."}]}``.

Every 4xx names what was wrong and how to fix it; nothing echoes a secret or a large input back.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from txwatch import telemetry
from txwatch.wire.problems import details_from

RETRY_AFTER_S = 5  # told to clients when the database is away or the collector busy; the hooks spool and retry


class NaNJSONResponse(JSONResponse):
    """JSON as Python's json writes it: NaN, Infinity and -Infinity literals allowed (a NaN loss is data)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_response(status: int, error: str, details: list[dict] | None = None, headers: dict | None = None):
    body: dict[str, Any] = {"error": error}
    if details is not None:
        body["details"] = details
    return NaNJSONResponse(body, status_code=status, headers=headers)


async def request_validation_handler(request: Request, exc: RequestValidationError):
    details = details_from(list(exc.errors()))
    first = details[0] if details else {"field": "(request)", "problem": "invalid"}
    return error_response(422, f"invalid request: {first['field']}: {first['problem']}", details)


async def http_exception_handler(request: Request, exc: StarletteHTTPException):
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
    if exc.status_code == 401 and request.url.path == "/api/v1/ingest":
        telemetry.BATCHES_REJECTED.labels("unauthorized").inc()
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such route: {request.method} {request.url.path} (the API lives under /api/v1; see /docs)"
    if exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def data_error_handler(request: Request, exc: Exception):
    """A value the database cannot hold (an id past its integer range...): the request's fault, not ours."""
    return error_response(422, "a value in the request is out of range for the database (check ids and numbers)")


async def database_down_handler(request: Request, exc: Exception):
    import logging

    logging.getLogger(__name__).warning("database error on %s: %s", request.url.path, exc.__class__.__name__)
    return error_response(503, "database unavailable; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
