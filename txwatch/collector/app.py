"""The collector's HTTP app: the API (``txwatch.api``) with the web page (``txwatch.web``) on top of it."""

from __future__ import annotations

from fastapi import FastAPI

from txwatch.api.app import create_api
from txwatch.collector.services import Services
from txwatch.web import router as web_page


def create_app(services: Services) -> FastAPI:
    """The FastAPI app the daemon serves over ``services``: ingest, queries, silences, health, /metrics and the
    web page; every ``/api`` route checks the bearer token when one is configured."""
    return create_api(services, routers=[web_page])
