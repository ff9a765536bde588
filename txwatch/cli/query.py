"""CLI commands: runs, show, series, metrics, diagnoses (tables by default; --json and --csv for scripts).

Every text from the history goes through ``txwatch.cli.output``: escaped for the terminal and rich (``cell``),
safe in a spreadsheet (``print_csv``); --csv carries the same columns as --json.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import closing
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError
from txwatch.cli.source import Db, Endpoint, Token
from txwatch.cli.output import cell, columns, console as _console, print_csv, print_json as _print_json

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (NaN and Infinity as Python's json writes them).")]
AsCsv = Annotated[bool, typer.Option("--csv", help="Print CSV.")]

# CSV headers when there is no row to take the JSON's keys from.
RUN_FIELDS = ["name", "project", "status", "started", "ended", "last_seen", "duration_s", "steps", "host",
              "end_reason", "tags", "error", "last_loss", "firing"]
DIAG_FIELDS = ["id", "rule", "severity", "state", "symptom", "cause", "fix", "reason", "run", "project", "layer",
               "step", "last_step", "resolved_step", "episode", "first_seen", "last_seen", "resolved_at", "labels",
               "evidence"]
POINT_FIELDS = ["step", "value", "time"]
SERIES_FIELDS = ["name", "metric", "layer", "points", "last_step", "last_value"]


class RunStatus(str, Enum):
    running = "running"
    finished = "finished"
    crashed = "crashed"
    stalled = "stalled"
    vanished = "vanished"


class Severity(str, Enum):
    critical = "critical"
    warning = "warning"
    info = "info"


class State(str, Enum):
    firing = "firing"
    resolved = "resolved"
    ended = "ended"


def _value(choice: Enum | None) -> str | None:
    return choice.value if choice is not None else None

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


def _print_csv(rows: list[dict], default: list[str]) -> None:
    print_csv(rows, columns(rows, default))


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
    status: Optional[RunStatus] = typer.Option(None, "--status", help="Only runs in this state."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many (newest first)."),
    where: Optional[str] = typer.Option(None, "--where", help=(
        "Only runs matching this filter, e.g. \"config.lr > 1e-3 and tags has 'sweep' and status == 'crashed'\" "
        "(fields: name, project, status, steps, last_loss, tags, started, ..., config.KEY, info.KEY; "
        "== != > >= < <= has in; and or not).")),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False, as_csv: AsCsv = False,
) -> None:
    """List runs, newest first."""
    _check_format(as_json, as_csv)
    if where is not None:
        _check_filter(where)
    with _source(endpoint, db, token) as src:
        rows = src.runs(project=project, status=_value(status), limit=limit, where=where)
    if as_json:
        return _print_json(rows)
    if as_csv:
        return _print_csv(rows, RUN_FIELDS)
    from rich.table import Table

    table = Table(title=f"{len(rows)} run(s)", title_justify="left")
    for col in ("run", "project", "status", "tags", "steps", "last loss", "firing", "started", "duration"):
        table.add_column(col, justify="right" if col in ("steps", "last loss") else "left")
    for r in rows:
        firing = " ".join(f"[{SEVERITY_STYLE.get(s, '')}]{n} {cell(s)}[/]" for s, n in r.get("firing", {}).items() if n)
        dur = r.get("duration_s")
        table.add_row(
            cell(r["name"]), cell(r["project"]), _status(r["status"]), cell(" ".join(r.get("tags") or [])) or "-",
            str(r["steps"]),
            _fmt_num(r.get("last_loss")), firing or "-", _fmt_time(r["started"]),
            f"{dur:.0f} s" if isinstance(dur, (int, float)) and dur < 3600 else
            (f"{dur / 3600:.1f} h" if isinstance(dur, (int, float)) else "-"),
        )
    _console().print(table)


def _check_filter(where: str) -> None:
    from txwatch.store.search import FilterError, parse

    try:
        parse(where)
    except FilterError as exc:
        raise CliError(f"--where: {exc}") from None


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{cell(status)}[/]"


def _severity(severity: str) -> str:
    return f"[{SEVERITY_STYLE.get(severity, '')}]{cell(severity)}[/]"


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
        f"[bold]{cell(detail['project'])}/{cell(detail['name'])}[/]  {_status(detail['status'])}"
        + (f" ({cell(detail['end_reason'])})" if detail.get("end_reason") and detail["end_reason"] != detail["status"]
           else ""),
        f"steps {detail['steps']}   started {_fmt_time(detail['started'])}   ended {_fmt_time(detail['ended'])}"
        f"   host {cell(detail.get('host') or '-')}",
    ]
    if detail.get("error"):
        lines.append(f"[red]{cell(detail['error']['type'])}: {cell(detail['error']['message'])}[/]")
    # not expanded: piped, the console is WIDE columns wide
    console.print(Panel("\n".join(lines), title="run", title_align="left", expand=False))
    if detail.get("config"):
        t = Table("config", "value", title_justify="left")
        for k, v in sorted(detail["config"].items()):
            t.add_row(cell(k), cell(json.dumps(v, allow_nan=True) if not isinstance(v, str) else v))
        console.print(t)
    preflight = (detail.get("info") or {}).get("preflight")
    if isinstance(preflight, dict):
        from txwatch.cli.preflight import render

        console.print(render(preflight))
    values = detail.get("summary", {}).get("last_values", {})
    if values:
        t = Table("metric", "latest", title_justify="left")
        for k, v in values.items():
            t.add_row(cell(k), _fmt_num(v))
        console.print(t)
    firing = detail.get("summary", {}).get("firing_diagnoses", [])
    if firing:
        t = Table("severity", "rule", "layer", "step", "symptom", title="firing diagnoses", title_justify="left")
        for d in firing:
            t.add_row(_severity(d["severity"]), cell(d["rule"]), cell(d["layer"] or "-"), _fmt_num(d["step"]),
                      cell(d["symptom"]))
        console.print(t)
    else:
        console.print("no diagnosis firing")


@app.command()
def series(
    run: str = typer.Argument(..., help="RUN or PROJECT/RUN."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False, as_csv: AsCsv = False,
) -> None:
    """List a run's series: point count and latest value, per-layer ones grouped under their metric."""
    _check_format(as_json, as_csv)
    with _source(endpoint, db, token) as src:
        found = sorted(src.series(run), key=lambda x: (x["layer"] is not None, x["metric"], x["layer"] or ""))
    if as_json:
        return _print_json([{k: x[k] for k in SERIES_FIELDS} for x in found])
    if as_csv:
        return print_csv(found, SERIES_FIELDS)
    from rich.table import Table

    console = _console()
    console.print(f"{cell(run)}: {len(found)} series")  # not the table's title: that wraps at the table's width
    t = Table("series", "points", "last step", "last value")
    group = None
    for x in found:
        if x["layer"] is not None and x["metric"] != group:
            group = x["metric"]
            members = [y for y in found if y["metric"] == group and y["layer"] is not None]
            t.add_row(f"[bold]{cell(group)}/*[/] ({len(members)} layers)",
                      str(sum(y["points"] for y in members)), "", "")
        name = f"  {cell(x['layer'])}" if x["layer"] is not None else cell(x["name"])
        t.add_row(name, str(x["points"]), _fmt_num(x["last_step"]), _fmt_num(x["last_value"]))
    console.print(t)


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
        sys.stdout.write(json.dumps([{k: p[k] for k in POINT_FIELDS} for p in points], allow_nan=True) + "\n")
        return
    if as_csv:
        return print_csv(points, POINT_FIELDS)
    from rich.table import Table

    shown = points[-TABLE_POINTS:]
    caption = f"last {len(shown)} of {len(points)} points; --json or --csv for all" if len(points) > len(shown) else None
    console = _console()
    console.print(f"{cell(run)} {cell(name)}")  # not the table's title: that wraps at the table's width
    t = Table("step", "value", "time", caption=caption)
    for p in shown:
        t.add_row(str(p["step"]), _fmt_num(p["value"]),
                  datetime.fromtimestamp(p["time"]).strftime("%Y-%m-%d %H:%M:%S"))
    console.print(t)


@app.command()
def incidents(
    run: str = typer.Argument(..., help="The run (RUN or PROJECT/RUN)."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """A run's incidents: the diagnoses that overlapped in time, the root cause and its fix first, the rest as
    its consequences (the causal order of docs/rules.md)."""
    with _source(endpoint, db, token) as src:
        rows = src.incidents(run)
    if as_json:
        return _print_json(rows)
    from txwatch.cli.rules_cmd import incident_text

    console = _console()
    if not rows:
        console.print(f"no incident in {cell(run)}: no warning or critical diagnosis")
    for incident in rows:
        console.print(incident_text(incident))


@app.command()
def diagnoses(
    run: Optional[str] = typer.Option(None, "--run", help="Only this run (RUN or PROJECT/RUN)."),
    project: Optional[str] = typer.Option(None, "--project", help="Only this project."),
    rule: Optional[str] = typer.Option(None, "--rule", help="Only this rule id."),
    severity: Optional[Severity] = typer.Option(None, "--severity", help="Only this severity."),
    state: Optional[State] = typer.Option(None, "--state", help="Only firing, resolved, or ended ones (the run ended while they were firing)."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None, as_json: AsJson = False, as_csv: AsCsv = False,
) -> None:
    """List diagnoses (newest first): what went wrong, the likely cause and the fix."""
    _check_format(as_json, as_csv)
    with _source(endpoint, db, token) as src:
        if run:  # an unknown run is an error, not an empty list
            run = "/".join(src.resolve(run))
        rows = src.diagnoses(run=run, project=project, rule=rule, severity=_value(severity), state=_value(state))
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
        t.add_row(_severity(d["severity"]), cell(d["rule"]), f"{cell(d['project'])}/{cell(d['run'])}",
                  cell(d["layer"] or "-"), _fmt_num(d["step"]), cell(d["state"]),
                  f"{cell(d['symptom'])}\n[dim]cause:[/] {cell(d['cause'])}\n[dim]fix:[/] {cell(fix_text)}")
    _console().print(t)
