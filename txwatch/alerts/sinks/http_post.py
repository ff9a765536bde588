"""Shared HTTP delivery for the generic webhook and Alertmanager sinks (httpx): one POST, its answer as a Result."""

from __future__ import annotations

from typing import Any

import httpx

from txwatch.alerts.sinks.protocol import Result, failed, retry, sent
from txwatch.alerts.redact import SECRETS

HTTP_TIMEOUT_S = 10.0  # one POST to a receiver on the team's network
_RETRY_STATUSES = {408, 425, 429}


def post_json(client: httpx.Client, url: str, body: Any, *, what: str, headers: dict[str, str] | None = None) -> Result:
    """POST ``body`` as JSON; 2xx -> sent, 408/429/5xx and network trouble -> retry, other 4xx -> failed.

    ``what`` names the receiver in messages ("webhook", "Alertmanager"); the URL never appears (it may hold a
    token), only its host.
    """
    try:
        resp = client.post(url, json=body, headers=headers or {})
    except httpx.TimeoutException:
        return retry("timeout", f"no answer from the {what} within {client.timeout.read or HTTP_TIMEOUT_S:g}s")
    except httpx.HTTPError as exc:
        return retry("connection_error", f"could not reach the {what} at {_host(url)}: {SECRETS.text(type(exc).__name__)}")
    if 200 <= resp.status_code < 300:
        return sent({"status": resp.status_code})
    snippet = SECRETS.text(resp.text.strip().replace("\n", " ")[:200])
    if resp.status_code in _RETRY_STATUSES or resp.status_code >= 500:
        wait = _retry_after(resp.headers.get("retry-after"))
        return retry(f"http_{resp.status_code}", f"the {what} answered HTTP {resp.status_code}: {snippet}", wait)
    return failed(f"http_{resp.status_code}", f"the {what} at {_host(url)} refused the notification with HTTP {resp.status_code}: {snippet}")


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host or "?"
    except Exception:
        return "?"


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
