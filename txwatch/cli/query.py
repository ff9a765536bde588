"""CLI commands: runs, show, metrics, diagnoses (tables by default; --json and --csv for scripts)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from contextlib import closing
from datetime import datetime
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape  # free text (symptoms, configs, errors) may contain [brackets]

from txwatch.cli.app import app
from txwatch.cli.errors import CliError

# The options every query command shares (typer reads them from these Annotated types).
Endpoint = Annotated[Optional[str], typer.Option(
    "--endpoint", envvar="TXWATCH_ENDPOINT", help="Read from the daemon at this URL (e.g. http://127.0.0.1:8642).")]
Db = Annotated[Optional[str], typer.Option(
    "--db", envvar="TXWATCH_DB_URL", help="Read this database (URL or SQLite path); default: the local database.")]
Token = Annotated[Optional[str], typer.Option("--token", envvar="TXWATCH_TOKEN", help="Bearer token for the daemon.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (NaN and Infinity as Python's json writes them).")]
AsCsv = Annotated[bool, typer.Option("--csv", help="Print CSV.")]

RUN_FIELDS = ["name", "project", "status", "started", "ended", "steps", "last_loss", "host", "end_reason"]
DIAG_FIELDS = ["rule", "severity", "state", "run", "project", "layer", "step", "first_seen", "symptom", "cause",
               "fix", "evidence"]
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {"running": "green", "finished": "blue", "crashed": "bold red", "stalled": "yellow",
                "vanished": "magenta"}
TABLE_POINTS = 50  # metrics as a table shows the last ones; --json/--csv print them all


def _source(endpoint: str | None, db: str | None, token: str | None) -> closing:
    """The source to read from, closed when the ``with`` block ends."""
    from txwatch.cli.source import open_source

    return closing(open_source(endpoint, db, token))


def _check_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise CliError("choose one of --json and --csv")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, allow_nan=True, indent=2) + "\n")


def _print_csv(rows: list[dict], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()})
    sys.stdout.write(buf.getvalue())


def _console():
    from rich.console import Console

    return Console()


def _fmt_time(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Inf" if v > 0 else "-Inf"
        return f"{v:.6g}"
    return str(v)


@app.command()
def runs(
    project: Optional[str] = typer.Option(None, "--project", help="Only this project."),
    status: Optional[str] = typer.Option(None, "--status", help="running, finished, crashed, stalled, vanished."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many (newest first)."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False, as_csv: AsCsv = False,
) -> None:
    """List runs, newest first."""
    _check_format(as_json, as_csv)
    with _source(endpoint, db, token) as src:
        rows = src.runs(project=project, status=status, limit=limit)
    if as_json:
        return _print_json(rows)
    if as_csv:
        return _print_csv(rows, RUN_FIELDS)
    from rich.table import Table

    table = Table(title=f"{len(rows)} run(s)", title_justify="left")
    for col in ("run", "project", "status", "steps", "last loss", "firing", "started", "duration"):
        table.add_column(col, justify="right" if col in ("steps", "last loss") else "left")
    for r in rows:
        firing = " ".join(f"[{SEVERITY_STYLE[s]}]{n} {s}[/]" for s, n in r.get("firing", {}).items() if n)
        dur = r.get("duration_s")
        table.add_row(
            r["name"], r["project"], f"[{STATUS_STYLE.get(r['status'], '')}]{r['status']}[/]", str(r["steps"]),
            _fmt_num(r.get("last_loss")), firing or "-", _fmt_time(r["started"]),
            f"{dur:.0f} s" if isinstance(dur, (int, float)) and dur < 3600 else
            (f"{dur / 3600:.1f} h" if isinstance(dur, (int, float)) else "-"),
        )
    _console().print(table)


@app.command()
def show(
    run: str = typer.Argument(..., help="RUN or PROJECT/RUN."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """Show one run: status, config, latest values and firing diagnoses."""
    with _source(endpoint, db, token) as src:
        detail = src.run(run)
    if as_json:
        return _print_json(detail)
    from rich.panel import Panel
    from rich.table import Table

    console = _console()
    lines = [
        f"[bold]{detail['project']}/{detail['name']}[/]  [{STATUS_STYLE.get(detail['status'], '')}]{detail['status']}[/]"
        + (f" ({detail['end_reason']})" if detail.get("end_reason") and detail["end_reason"] != detail["status"] else ""),
        f"steps {detail['steps']}   started {_fmt_time(detail['started'])}   ended {_fmt_time(detail['ended'])}"
        f"   host {detail.get('host') or '-'}",
    ]
    if detail.get("error"):
        lines.append(f"[red]{escape(detail['error']['type'])}: {escape(detail['error']['message'])}[/]")
    console.print(Panel("\n".join(lines), title="run", title_align="left"))
    if detail.get("config"):
        t = Table("config", "value", title_justify="left")
        for k, v in sorted(detail["config"].items()):
            t.add_row(escape(str(k)), escape(json.dumps(v, allow_nan=True) if not isinstance(v, str) else v))
        console.print(t)
    values = detail.get("summary", {}).get("last_values", {})
    if values:
        t = Table("metric", "latest", title_justify="left")
        for k, v in values.items():
            t.add_row(escape(k), _fmt_num(v))
        console.print(t)
    firing = detail.get("summary", {}).get("firing_diagnoses", [])
    if firing:
        t = Table("severity", "rule", "layer", "step", "symptom", title="firing diagnoses", title_justify="left")
        for d in firing:
            t.add_row(f"[{SEVERITY_STYLE.get(d['severity'], '')}]{d['severity']}[/]", escape(d["rule"]),
                      escape(d["layer"] or "-"), _fmt_num(d["step"]), escape(d["symptom"]))
        console.print(t)
    else:
        console.print("no diagnosis firing")


@app.command()
def metrics(
    run: str = typer.Argument(..., help="RUN or PROJECT/RUN."),
    name: str = typer.Argument(..., help="Series name, e.g. loss or grad_norm/fc.weight."),
    max_points: Optional[int] = typer.Option(None, "--max-points", min=2,
                                             help="Downsample (min/max per bucket) to about this many points."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False, as_csv: AsCsv = False,
) -> None:
    """Print one metric series of a run, in step order."""
    _check_format(as_json, as_csv)
    with _source(endpoint, db, token) as src:
        points = src.points(run, name, max_points)
    if as_json:
        sys.stdout.write(json.dumps([{"step": p["step"], "value": p["value"], "time": p["time"]} for p in points],
                                    allow_nan=True) + "\n")
        return
    if as_csv:
        return _print_csv(points, ["step", "value", "time"])
    from rich.table import Table

    shown = points[-TABLE_POINTS:]
    caption = f"last {len(shown)} of {len(points)} points; --json or --csv for all" if len(points) > len(shown) else None
    t = Table("step", "value", "time", title=f"{run} {name}", title_justify="left", caption=caption)
    for p in shown:
        t.add_row(str(p["step"]), _fmt_num(p["value"]),
                  datetime.fromtimestamp(p["time"]).strftime("%Y-%m-%d %H:%M:%S"))
    _console().print(t)


@app.command()
def diagnoses(
    run: Optional[str] = typer.Option(None, "--run", help="Only this run (RUN or PROJECT/RUN)."),
    project: Optional[str] = typer.Option(None, "--project", help="Only this project."),
    rule: Optional[str] = typer.Option(None, "--rule", help="Only this rule id."),
    severity: Optional[str] = typer.Option(None, "--severity", help="critical, warning or info."),
    state: Optional[str] = typer.Option(None, "--state", help="firing or resolved."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False, as_csv: AsCsv = False,
) -> None:
    """List diagnoses (newest first): what went wrong, the likely cause and the fix."""
    _check_format(as_json, as_csv)
    with _source(endpoint, db, token) as src:
        if run and "/" not in run and endpoint:
            run = "/".join(src.resolve(run))
        rows = src.diagnoses(run=run, project=project, rule=rule, severity=severity, state=state)
    if as_json:
        return _print_json(rows)
    if as_csv:
        return _print_csv(rows, DIAG_FIELDS)
    from rich.table import Table

    t = Table("severity", "rule", "run", "layer", "step", "state", "symptom / cause / fix",
              title=f"{len(rows)} diagnosis(es)", title_justify="left", show_lines=True)
    for d in rows:
        fix = d.get("fix") or []
        fix_text = "; ".join(str(f) for f in fix) if isinstance(fix, list) else str(fix)
        t.add_row(f"[{SEVERITY_STYLE.get(d['severity'], '')}]{d['severity']}[/]", escape(d["rule"]),
                  f"{d['project']}/{d['run']}", escape(d["layer"] or "-"), _fmt_num(d["step"]), d["state"],
                  f"{escape(d['symptom'])}\n[dim]cause:[/] {escape(d['cause'])}\n[dim]fix:[/] {escape(fix_text)}")
    _console().print(t)
