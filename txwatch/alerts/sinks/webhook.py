"""The generic JSON webhook sink: POSTs each notification's payload (see docs/alerts.md for the format).

Each POST carries the notification's dedupe key in the body and in an ``Idempotency-Key`` header, so a receiver
can drop the repeat that follows a lost response (webhook delivery is at least once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from txwatch.alerts.clock import iso, utcnow
from txwatch.alerts.ledger import Ledger
from txwatch.alerts.sinks.protocol import Claimed, Result
from txwatch.alerts.sinks.http_post import HTTP_TIMEOUT_S, post_json
from txwatch.alerts.redact import SECRETS


if TYPE_CHECKING:
    from txwatch.settings import Settings

USER_AGENT = "txwatch-alerts/1"


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = HTTP_TIMEOUT_S):
        SECRETS.add(url)
        self.url = url
        self.client = httpx.Client(timeout=timeout_s, headers={"User-Agent": USER_AGENT})

    def batches(self, rows: list[Claimed]) -> list[list[Claimed]]:
        return [[r] for r in rows]

    def deliver(self, rows: list[Claimed], ledger: Ledger) -> dict[int, Result]:
        row = rows[0]
        body = {**{k: v for k, v in row.payload.items() if k != "mention"}, "kind": row.kind,
                "dedupe_key": row.dedupe_key, "sent_at": iso(utcnow())}
        return {row.id: post_json(self.client, self.url, body, what="webhook", headers={"Idempotency-Key": row.dedupe_key})}

    def close(self) -> None:
        self.client.close()


def from_settings(settings: Settings, *, timeout_s: float) -> WebhookSink:
    """The webhook sink for ``TXWATCH_WEBHOOK_URL`` (registered in ``txwatch.alerts.sinks``)."""
    assert settings.webhook_url is not None  # the registry builds it only when set
    return WebhookSink(settings.webhook_url.get_secret_value(), timeout_s=timeout_s)
