"""A run's stored preflight report (``info.preflight``, sent by ``txwatch.preflight``) as rich tables: the
checks with their verdicts, figures, likely causes and fixes, then each module's output shape. What
``txwatch show`` prints, and what ``rich.print(report)`` prints in a training script with the full package.
Everything in the report came from a training job: it is escaped (``cell``) before it reaches the terminal."""

from __future__ import annotations

from typing import Any

from txwatch.cli.output import cell

VERDICT_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skipped": "dim"}


def _figures(figures: Any) -> str:
    if not isinstance(figures, dict):
        return ""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())


def render(report: dict[str, Any]) -> Any:
    """The rich renderable of a stored report (a dict as ``Report.to_dict()`` made it)."""
    from rich.console import Group
    from rich.table import Table

    seconds = report.get("seconds")
    title = "preflight" + (f" ({seconds:.1f} s on {cell(report.get('device', '?'))})"
                           if isinstance(seconds, (int, float)) else "")
    checks = Table("check", "verdict", "figures", "what it means / fix", title=title, title_justify="left")
    shapes: list[Any] = []
    for c in report.get("checks") or []:
        if not isinstance(c, dict):
            continue
        verdict = str(c.get("verdict", "?"))
        lines = [cell(c.get("summary", ""))]
        lines += [f"[yellow]likely:[/] {cell(x)}" for x in c.get("causes") or []]
        lines += [f"[cyan]fix:[/] {cell(x)}" for x in c.get("fix") or []]
        checks.add_row(cell(c.get("name", "?")), f"[{VERDICT_STYLE.get(verdict, '')}]{cell(verdict)}[/]",
                       cell(_figures(c.get("figures"))), "\n".join(lines))
        rows = [r for r in c.get("table") or [] if isinstance(r, dict)]
        if rows:
            columns = list(rows[0])
            t = Table(*(cell(k) for k in columns), title=f"{cell(c.get('name', '?'))}: per module",
                      title_justify="left")
            for row in rows:
                t.add_row(*(cell(row.get(k, "")) for k in columns))
            if c.get("table_rows"):
                t.caption = f"the first {len(rows)} of {c['table_rows']} modules"
            shapes.append(t)
    return Group(checks, *shapes)
