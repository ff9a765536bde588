"""The preflight report: one verdict per check, with its figures and the fix in the guide's words.

Plain data (``to_dict()`` is what the run stores, in its info under ``preflight``); ``str(report)`` is a text
table, and ``rich.print(report)`` prints rich tables (with the full package: ``txwatch.cli.preflight``, which
``txwatch show`` uses too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

PASS, WARN, FAIL, SKIPPED = "pass", "warn", "fail", "skipped"
LEVEL = {PASS: 0, SKIPPED: 0, WARN: 1, FAIL: 2}  # the value of the preflight/<check> series the rules read
MAX_TABLE_ROWS = 200  # the shapes table of a large model: the first 200 modules (it is stored with the run)


@dataclass
class Check:
    """One check's outcome. ``figures``: numbers and short strings; ``table``: rows (the shapes check)."""

    name: str
    verdict: str
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    causes: list[str] = field(default_factory=list)
    fix: list[str] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "verdict": self.verdict, "summary": self.summary,
                               "figures": {k: _plain(v) for k, v in self.figures.items()}}
        if self.causes:
            out["causes"] = list(self.causes)
        if self.fix:
            out["fix"] = list(self.fix)
        if self.table:
            out["table"] = [{k: _plain(v) for k, v in row.items()} for row in self.table[:MAX_TABLE_ROWS]]
            if len(self.table) > MAX_TABLE_ROWS:
                out["table_rows"] = len(self.table)
        return out


@dataclass
class Report:
    """What ``txwatch.preflight()`` returns: ``checks`` in order, ``ok`` when none failed."""

    checks: list[Check]
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return all(c.verdict != FAIL for c in self.checks)

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def levels(self) -> dict[str, float]:
        """``preflight/<check>`` -> 0 (pass or skipped), 1 (warn), 2 (fail): the series the rules read."""
        return {f"preflight/{c.name}": float(LEVEL[c.verdict]) for c in self.checks}

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "ok": self.ok, "seconds": round(self.seconds, 3), "device": self.device,
                "checks": [c.to_dict() for c in self.checks]}

    def __str__(self) -> str:
        return render_text(self.to_dict())

    def __rich__(self) -> Any:
        """Rich tables (the checks, then the shapes) with the full txwatch package, which renders stored
        reports for ``txwatch show`` too; the text otherwise."""
        try:
            from txwatch.cli.preflight import render
        except ImportError:  # the hooks alone (a training image)
            from rich.text import Text

            return Text(str(self))
        return render(self.to_dict())


def _plain(value: Any) -> Any:
    """JSON-able and short: floats to 4 significant digits (NaN and infinities kept), the rest as is."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def figure_text(figures: dict[str, Any]) -> str:
    """``figures`` as one line: ``name value, ...`` (floats to 4 significant digits)."""
    parts = []
    for k, v in figures.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k} {v}")
    return ", ".join(parts)


def render_text(report: dict[str, Any]) -> str:
    """The stored report as plain text: one block per check (what ``str(report)`` prints)."""
    lines = [f"txwatch preflight ({report.get('seconds', 0):.1f} s on {report.get('device', '?')}): "
             + ("no check failed" if report.get("ok") else "some checks FAILED")]
    for c in report.get("checks", []):
        lines.append(f"  [{c['verdict'].upper():>7}] {c['name']}: {c['summary']}")
        if c.get("figures"):
            lines.append(f"            {figure_text(c['figures'])}")
        for cause in c.get("causes", []):
            lines.append(f"            likely: {cause}")
        for step in c.get("fix", []):
            lines.append(f"            fix: {step}")
    return "\n".join(lines)
