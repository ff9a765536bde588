"""The console sink: diagnoses as readable lines, for embedded mode and ``txwatch demo``.

Nothing here is durable (there is no one to deliver to after a crash): the outbox hands each fire and resolve to
``ConsoleSink.emit`` once the transaction that decided it has committed. Lines go to a callback when one is given
(the CLI prints them with rich) and otherwise to the ``txwatch.alerts.console`` logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("txwatch.alerts.console")  # the name docs/alerts.md gives; the CLI quiets it

LineCallback = Callable[[str, dict[str, Any]], None]
_LEVEL = {"critical": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


def format_lines(payload: dict[str, Any]) -> str:
    """A diagnosis in a few lines::

        [CRITICAL] search-ranking/bert-ft-42 step 1234: Loss became NaN (loss-nonfinite)
            cause: the learning rate is too high for this model
            fix:   1. lower the learning rate 10x  2. enable gradient clipping
            why:   loss was nan at step 1234
    """
    d, r = payload["diagnosis"], payload["run"]
    where = f"{r['project']}/{r['name']}"
    layer = f" [layer {d['layer']}]" if d.get("layer") else ""
    if payload.get("kind") == "resolve":
        step = d.get("resolved_step") if d.get("resolved_step") is not None else d.get("last_step")
        line = f"[RESOLVED] {where} step {step}: {d['symptom']}{layer} ({d['rule']})"
        resolution = (d.get("evidence") or {}).get("resolution")
        if isinstance(resolution, dict) and resolution.get("reason"):
            line += f"\n    why:   {resolution['reason']}"
        return line
    fixes = "  ".join(f"{i}. {f}" for i, f in enumerate(d.get("fix") or [], 1)) or "-"
    lines = [
        f"[{d['severity'].upper()}] {where} step {d.get('first_step')}: {d['symptom']}{layer} ({d['rule']})",
        f"    cause: {d['cause']}",
        f"    fix:   {fixes}",
    ]
    if d.get("reason"):
        lines.append(f"    why:   {d['reason']}")
    if r.get("url"):
        lines.append(f"    see:   {r['url']}")
    return "\n".join(lines)


class ConsoleSink:
    """Writes fires and resolves as lines; never raises into the caller (a broken callback is logged once)."""

    name = "console"

    def __init__(self, callback: LineCallback | None = None):
        self.callback = callback
        self._callback_failed = False

    def emit(self, payload: dict[str, Any]) -> None:
        text = format_lines(payload)
        if self.callback is not None:
            try:
                self.callback(text, payload)
                return
            except Exception as exc:  # a printing problem must not break the collector
                if not self._callback_failed:
                    self._callback_failed = True
                    log.warning("console alert callback failed (%s: %s); logging instead", type(exc).__name__, exc)
        level = logging.INFO if payload.get("kind") == "resolve" else _LEVEL.get(payload["diagnosis"]["severity"], logging.INFO)
        log.log(level, "%s", text)
