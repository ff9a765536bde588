"""FastAPI dependencies shared by every router: the running services and the bearer token check.

``Services`` is what the routes read from the composed collector (``txwatch.collector.services.Services``
satisfies it): the API depends on this protocol, not on the composition root above it.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from fastapi import HTTPException, Request, status
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from txwatch.ingest.queue import Collector
from txwatch.settings import Settings


class Services(Protocol):
    """The parts of a running collector the HTTP API uses."""

    settings: Settings
    db: Engine
    session_factory: sessionmaker[Session]
    collector: Collector


# Both are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in its thread pool,
# a hop per dependency per request that cost more than the check itself (measured on the ingest path).


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def require_token(request: Request) -> None:
    """Reject the request unless it carries the configured bearer token (no-op when none is configured)."""
    services: Services = request.app.state.services
    token = services.settings.token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), token.get_secret_value()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token: send 'Authorization: Bearer <TXWATCH_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
