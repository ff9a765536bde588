"""The Alertmanager sink: pushes diagnoses to a Prometheus Alertmanager (``POST /api/v2/alerts``).

Labels: ``alertname`` (the rule id), ``rule``, ``severity``, ``run``, ``project``, ``layer`` for layer rules, the
rule's own labels, and ``source="txwatch"``. Annotations: ``summary``, ``symptom``, ``cause``, ``fix``,
``evidence``. A resolve sends ``endsAt``. Alertmanager forgets an alert that is not re-sent within its
``resolve_timeout`` (5 minutes by default), so ``refresh()`` (a scheduler job, every ``REFRESH_INTERVAL_S``)
re-pushes every diagnosis that is still firing, as Prometheus does with its rules.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from txwatch.alerts.clock import iso, utcnow
from txwatch.alerts.ledger import Ledger
from txwatch.alerts.sinks.protocol import Claimed, Result
from txwatch.alerts.payload import diagnosis_payload
from txwatch.alerts.sinks.http_post import HTTP_TIMEOUT_S, post_json
from txwatch.alerts.silences import matching_silence
from txwatch.store.models import Diagnosis, Notification

if TYPE_CHECKING:
    from txwatch.alerts.sinks.protocol import Job
    from txwatch.settings import Settings

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 60.0  # well inside Alertmanager's default resolve_timeout of 5 minutes
REFRESH_JOB_ID = "txwatch.alerts.alertmanager-refresh"
REFRESH_CHUNK = 500  # alerts per POST when refreshing
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")


def alert_for(payload: dict[str, Any], kind: str, now: datetime | None = None) -> dict[str, Any]:
    """The Alertmanager v2 alert for one notification payload."""
    d, r = payload["diagnosis"], payload["run"]
    labels: dict[str, str] = {}
    for key, value in (d.get("labels") or {}).items():
        name = _LABEL_NAME.sub("_", str(key))
        if name and not name[0].isdigit():
            labels[name] = str(value)
    labels.update(
        alertname=d["rule"], rule=d["rule"], severity=d["severity"], run=r["name"], project=r["project"], source="txwatch"
    )
    if d.get("layer"):
        labels["layer"] = d["layer"]
    fix = "\n".join(f"{i}. {f}" for i, f in enumerate(d.get("fix") or [], 1))
    evidence = d.get("reason") or ""
    if d.get("evidence"):
        evidence = (evidence + "\n" if evidence else "") + json.dumps(d["evidence"], sort_keys=True)
    step = d.get("last_step") if d.get("last_step") is not None else d.get("first_step")
    annotations = {
        "summary": f"{d['symptom']} ({r['project']}/{r['name']}, step {step})",
        "symptom": d["symptom"],
        "cause": d["cause"],
        "fix": fix,
        "evidence": evidence,
    }
    alert: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": d.get("first_seen") or iso(now or utcnow())}
    if kind == "resolve":
        alert["endsAt"] = d.get("resolved_at") or iso(now or utcnow())
    if r.get("url"):
        alert["generatorURL"] = r["url"]
    return alert


class AlertmanagerSink:
    name = "alertmanager"

    def __init__(self, url: str, *, public_url: str | None = None, timeout_s: float = HTTP_TIMEOUT_S):
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.public_url = public_url
        self.client = httpx.Client(timeout=timeout_s)
        self._refresh_failed = False

    def batches(self, rows: list[Claimed]) -> list[list[Claimed]]:
        return [[r] for r in rows]

    def deliver(self, rows: list[Claimed], ledger: Ledger) -> dict[int, Result]:
        row = rows[0]
        return {row.id: post_json(self.client, self.url, [alert_for(row.payload, row.kind)], what="Alertmanager")}

    def refresh(self, session_factory: sessionmaker[Session], now: datetime | None = None) -> int:
        """Re-push every firing, announced, unsilenced diagnosis; returns how many. Never raises."""
        now = now or utcnow()
        try:
            alerts = self._firing(session_factory, now)
            for i in range(0, len(alerts), REFRESH_CHUNK):
                result = post_json(self.client, self.url, alerts[i : i + REFRESH_CHUNK], what="Alertmanager")
                if result.status != "sent":
                    if not self._refresh_failed:
                        self._refresh_failed = True
                        log.warning("could not refresh firing alerts in Alertmanager: %s", result.detail)
                    return 0
            self._refresh_failed = False
            return len(alerts)
        except Exception as exc:  # a scheduler job must not die
            log.warning("Alertmanager refresh failed: %s: %s", type(exc).__name__, exc)
            return 0

    def _firing(self, session_factory: sessionmaker[Session], now: datetime) -> list[dict[str, Any]]:
        with session_factory() as s:
            announced = (
                select(Notification.diagnosis_id)
                .where(Notification.sink == self.name, Notification.kind == "fire", Notification.status == "sent")
            )
            diags = s.scalars(select(Diagnosis).where(Diagnosis.state == "firing", Diagnosis.id.in_(announced))).all()
            alerts = []
            for d in diags:
                payload = diagnosis_payload(s, d, "update", self.public_url)
                p_run = payload["run"]
                if matching_silence(s, project=p_run["project"], run=p_run["name"], rule=d.rule_id, now=now):
                    continue
                alerts.append(alert_for(payload, "update", now))
        return alerts

    def jobs(self, session_factory: sessionmaker[Session]) -> list[Job]:
        """The refresh, every ``REFRESH_INTERVAL_S``."""
        return [(
            REFRESH_JOB_ID,
            lambda: self.refresh(session_factory),
            {"trigger": "interval", "seconds": REFRESH_INTERVAL_S, "coalesce": True, "max_instances": 1},
        )]

    def close(self) -> None:
        self.client.close()


def from_settings(settings: Settings, *, timeout_s: float) -> AlertmanagerSink:
    """The Alertmanager sink for ``TXWATCH_ALERTMANAGER_URL`` (registered in ``txwatch.alerts.sinks``)."""
    assert settings.alertmanager_url  # the registry builds it only when set
    return AlertmanagerSink(settings.alertmanager_url, public_url=settings.public_url, timeout_s=timeout_s)
