"""FastAPI dependencies shared by every router: the running services and the bearer token check."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request, status

from txwatch.services import Services


# Both are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in its thread pool,
# a hop per dependency per request that cost more than the check itself (measured on the ingest path).


async def get_services(request: Request) -> Services:
    return request.app.state.services


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
