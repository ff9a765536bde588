"""POST /api/v1/ingest: one batch from the hooks."""

from __future__ import annotations

import logging
import time

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect

from txwatch import telemetry
from txwatch.api.deps import Services, get_services, require_token
from txwatch.api.errors import RETRY_AFTER_S, NaNJSONResponse, error_response
from txwatch.api.models import ERRORS, ErrorBody, IngestAck
from txwatch.ingest.queue import IngestBusy, IngestTimeout
from txwatch.wire.batch import Batch
from txwatch.wire.problems import batch_error

log = logging.getLogger(__name__)

router = APIRouter()

def _batch_schema() -> dict:
    schema = Batch.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def batch_component_schemas() -> dict:
    """The schemas the ingest body refers to, for the app's OpenAPI components."""
    full = Batch.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = full.pop("$defs", {})
    return {"Batch": full, **defs}


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (``BodyTooLarge``) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/api/v1/ingest",
    response_model=IngestAck,
    dependencies=[Depends(require_token)],
    summary="Store one batch from the hooks (idempotent on run, rank, seq)",
    responses={**ERRORS, 413: {"model": ErrorBody, "description": "body larger than max_body_bytes"},
               415: {"model": ErrorBody, "description": "body not sent as application/json"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}},
        }
    },
)
async def ingest(request: Request, services: Services = Depends(get_services)):
    # Counted per app, on its event loop's thread only (no lock needed); checked before a worker thread is taken.
    state = request.app.state
    in_flight = getattr(state, "ingest_in_flight", 0)
    if in_flight >= services.settings.ingest_max_in_flight:
        telemetry.BATCHES_REJECTED.labels("busy").inc()
        return error_response(
            429, f"the collector is busy ({in_flight} batches being stored); the batch was not stored, "
            f"retry after {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    state.ingest_in_flight = in_flight + 1
    try:
        return await _ingest(request, services)
    finally:
        state.ingest_in_flight -= 1


async def _ingest(request: Request, services: Services):
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        # Not a formality: a browser sends text/plain (or a form) cross-site without asking first; JSON it does not.
        telemetry.BATCHES_REJECTED.labels("content_type").inc()
        return error_response(
            415, f"send the batch as Content-Type: application/json (got {media_type[:60] or 'none'!r})",
            [{"field": "(header) content-type", "problem": "must be application/json"}],
        )
    limit = services.settings.max_body_bytes
    try:
        body = await read_limited(request, limit)
    except BodyTooLarge:
        telemetry.BATCHES_REJECTED.labels("too_large").inc()
        return error_response(
            413,
            f"request body larger than {limit} bytes (max_body_bytes): send smaller batches "
            "(the hooks split them) or raise TXWATCH_MAX_BODY_BYTES",
            [{"field": "(body)", "problem": f"more than {limit} bytes"}],
        )
    except ClientDisconnect:
        return error_response(400, "the client went away before sending the whole body")
    if not body.strip():
        telemetry.BATCHES_REJECTED.labels("malformed_json").inc()
        return error_response(400, "empty body: send one batch as a JSON object",
                              [{"field": "(body)", "problem": "empty"}])
    telemetry.INGEST_IN_FLIGHT.inc()
    try:
        # Collector.ingest gives up after db_timeout_s, except in the thread whose turn it is to write, which
        # waits on the database itself: this request is answered all the same, and the write finishes (or fails)
        # on its own; resent, the batch is a duplicate if it was stored. Twice the time: validation counts too.
        with anyio.move_on_after(2 * services.settings.db_timeout_s):
            return await anyio.to_thread.run_sync(_validate_and_store, services, body, abandon_on_cancel=True)
        telemetry.BATCHES_REJECTED.labels("unavailable").inc()
        return error_response(
            503, f"database not answering within {2 * services.settings.db_timeout_s:g} s; send the batch again "
            "later", headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    finally:
        telemetry.INGEST_IN_FLIGHT.dec()


def _validate_and_store(services: Services, body: bytes):
    try:
        batch = Batch.model_validate_json(body)
    except ValidationError as exc:
        status, reason, message, details = batch_error(exc.errors(include_url=False), body)
        telemetry.BATCHES_REJECTED.labels(reason).inc()
        return error_response(status, message, details)
    try:
        result = services.collector.ingest(batch, timeout_s=services.settings.db_timeout_s)
    except IngestBusy as exc:
        telemetry.BATCHES_REJECTED.labels("busy").inc()
        return error_response(429, f"the collector is busy ({exc}); the batch was not stored, retry after "
                              f"{RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
    except IngestTimeout as exc:
        telemetry.BATCHES_REJECTED.labels("unavailable").inc()
        _log_db_error(exc)
        return error_response(
            503, f"database not answering: {exc}; send it again later (if it was stored meanwhile, the resend is "
            "recognised as a duplicate)", headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    except SQLAlchemyError as exc:
        telemetry.BATCHES_REJECTED.labels("unavailable").inc()
        _log_db_error(exc)
        why = services.collector.write_problem or f"database unavailable ({exc.__class__.__name__})"
        return error_response(
            503, f"{why}; the batch was not stored, retry later", headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    # a Response, not a dict: FastAPI would validate the dict against IngestAck again on every batch
    return NaNJSONResponse({"accepted": result.accepted, "duplicate": result.duplicate, "points": result.points})


_last_db_log = [0.0]
DB_ERROR_LOG_EVERY_S = 60.0  # a database outage is logged once a minute, not once per batch


def _log_db_error(exc: Exception) -> None:
    now = time.monotonic()
    if now - _last_db_log[0] >= DB_ERROR_LOG_EVERY_S:
        _last_db_log[0] = now
        log.error("could not store a batch: %s", exc.__class__.__name__, exc_info=exc)
