"""The notification payload: a JSON-safe snapshot of a diagnosis, taken when the notification is decided.

Every sink renders from this snapshot (stored in ``notifications.payload``), so what is sent after a restart is
what was decided before it. The generic webhook posts it as it is (documented in docs/alerts.md).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session

from txwatch.alerts.clock import iso
from txwatch.store.codec import json_safe
from txwatch.store.models import Diagnosis, Project, Run

PAYLOAD_VERSION = 1


def run_url(public_url: str | None, project: str, run: str) -> str | None:
    """The run's page on the daemon's web UI, when the daemon knows where people reach it."""
    if not public_url:
        return None
    return f"{public_url.rstrip('/')}/runs/{quote(project, safe='')}/{quote(run, safe='')}"


def diagnosis_payload(session: Session, diagnosis: Diagnosis, kind: str, public_url: str | None) -> dict[str, Any]:
    """The snapshot for ``diagnosis`` (run and project names looked up in ``session``)."""
    run = session.get(Run, diagnosis.run_id)
    project = session.get(Project, run.project_id) if run is not None else None
    run_name = run.name if run is not None else f"run-{diagnosis.run_id}"
    project_name = project.name if project is not None else "default"
    fix = diagnosis.fix if isinstance(diagnosis.fix, list) else ([diagnosis.fix] if diagnosis.fix else [])
    return {
        "version": PAYLOAD_VERSION,
        "kind": kind,
        "diagnosis": {
            "id": diagnosis.id,
            "rule": diagnosis.rule_id,
            "severity": diagnosis.severity,
            "state": diagnosis.state,
            "episode": diagnosis.episode,
            "layer": diagnosis.layer or None,
            "symptom": diagnosis.symptom,
            "cause": diagnosis.cause,
            "fix": [str(f) for f in fix],
            "reason": diagnosis.reason or "",
            "evidence": json_safe(diagnosis.evidence or {}),
            "labels": json_safe(diagnosis.labels or {}),
            "first_step": diagnosis.first_step,
            "last_step": diagnosis.last_step,
            "resolved_step": diagnosis.resolved_step,
            "first_seen": iso(diagnosis.first_seen),
            "last_seen": iso(diagnosis.last_seen),
            "resolved_at": iso(diagnosis.resolved_at),
        },
        "run": {"name": run_name, "project": project_name, "url": run_url(public_url, project_name, run_name)},
    }
