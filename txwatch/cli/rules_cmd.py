"""CLI commands: rules list, rules check, rules replay."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError
from txwatch.cli.output import cell, console as _console, plain
from txwatch.cli.source import Db, Endpoint, Token

rules_app = typer.Typer(
    help="Diagnosis rules: list what is loaded, check rule files, replay rules over a stored run.",
    no_args_is_help=True,
)
app.add_typer(rules_app, name="rules")

RULES = typer.Option(None, "--rules", help="A folder (or file) of your own rules; repeat for several.")
NO_BUILTIN = typer.Option(False, "--no-builtin", help="Leave out the built-in rules.")
JSON = typer.Option(False, "--json", help="Print JSON.")
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATE_STYLE = {"firing": "bold red", "pending": "yellow", "resolved": "green", "cancelled": "dim", "ended": "red"}


def _load(rules: Optional[list[Path]], no_builtin: bool):
    from txwatch.rules import RuleError, load_rules

    try:
        return load_rules(list(rules or []), builtin=not no_builtin)
    except RuleError as exc:
        raise CliError(f"invalid rules:\n{exc}\n(check them with `txwatch rules check DIR`)") from None


def _replay_db(db: str | None, run: str, loaded, include_pending: bool):
    from txwatch.cli.source import DbSource
    from txwatch.rules import RunNotFound, replay

    src = DbSource(db)
    try:
        return replay(src.sessions, run, loaded, include_pending=include_pending)
    except RunNotFound as exc:
        raise CliError(f"{exc}", exit_code=1) from None
    finally:
        src.close()


def _replay_endpoint(endpoint: str, token: str | None, run: str, loaded, include_pending: bool):
    """The run's series that the rules read, fetched from the daemon into a scratch database, and replayed there."""
    from txwatch.cli.scratch import scratch_copy
    from txwatch.cli.source import HttpSource
    from txwatch.rules import replay
    from txwatch.rules.evaluator import Core

    index = Core([r for r in loaded if not r.time_based]).index
    src = HttpSource(endpoint, token)
    try:
        with scratch_copy(src, run, lambda name: index.match(name)[0] is not None) as (sessions, ref):
            return replay(sessions, ref, loaded, include_pending=include_pending)
    finally:
        src.close()


@rules_app.command("list")
def list_rules(
    rules: Optional[list[Path]] = RULES,
    no_builtin: bool = NO_BUILTIN,
    as_json: bool = JSON,
) -> None:
    """Show the loaded rules: the built-in ones and those in --rules folders."""
    loaded = _load(rules, no_builtin)
    if as_json:
        out = [
            {
                "id": r.id,
                "severity": r.severity,
                "symptom": r.symptom,
                "cause": r.cause,
                "fix": r.fix,
                "condition": r.condition,
                "for": str(r.hold),
                "resolve": r.resolve_condition,
                "resolve_for": str(r.resolve_hold),
                "scope": r.scope,
                "labels": r.labels,
                "source": "built-in" if r.builtin else f"{r.source}:{r.line}",
            }
            for r in loaded
        ]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{len(loaded)} rules", show_lines=False)
    for col in ("id", "severity", "symptom", "for", "scope", "source"):
        table.add_column(col, overflow="fold", no_wrap=col in ("id", "severity", "for"))
    for r in sorted(loaded, key=lambda r: r.id):
        sev = f"[{SEVERITY_STYLE.get(r.severity, '')}]{r.severity}[/]"
        source = "built-in" if r.builtin else cell(f"{r.source}:{r.line}")
        hold = "at once" if r.hold.zero else str(r.hold)
        table.add_row(cell(r.id), sev, cell(r.symptom), hold, cell(r.scope), source)
    _console().print(table)


@rules_app.command("check")
def check_rules(paths: list[Path] = typer.Argument(..., help="Rule folders or files to validate.")) -> None:
    """Validate rule files: print each problem as file:line: message and exit 1 if there is any."""
    from txwatch.rules import check_paths

    loaded, problems = check_paths(paths)
    if problems:
        for p in problems:
            sys.stderr.write(f"{plain(p)}\n")
        sys.stderr.write(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found\n")
        raise SystemExit(1)  # typer.Exit is swallowed under standalone_mode=False
    if not loaded:
        sys.stderr.write(f"no rule files (*.yaml, *.yml) in {plain(', '.join(map(str, paths)))}\n")
        raise SystemExit(1)  # typer.Exit is swallowed under standalone_mode=False
    sys.stdout.write(f"{len(loaded)} rule{'s' if len(loaded) != 1 else ''} OK: {plain(', '.join(r.id for r in loaded))}\n")


@rules_app.command("replay")
def replay_run(
    run: str = typer.Argument(..., help="The run: NAME (unique across projects) or PROJECT/NAME."),
    rules: Optional[list[Path]] = RULES,
    no_builtin: bool = NO_BUILTIN,
    db: Db = None,
    endpoint: Endpoint = None,
    token: Token = None,
    as_json: bool = JSON,
    quiet_pending: bool = typer.Option(False, "--no-pending", help="Show only firing and resolved."),
) -> None:
    """Run the rules over a stored run and print what would have fired at which step (nothing is written)."""
    loaded = _load(rules, no_builtin)
    if endpoint:
        found = _replay_endpoint(endpoint, token, run, loaded, not quiet_pending)
    else:
        found = _replay_db(db, run, loaded, not quiet_pending)
    from txwatch.rules.incidents import group
    from txwatch.rules.replay import episodes

    skipped = sorted(r.id for r in loaded if r.time_based)
    incidents = group(episodes(found, loaded))
    if as_json:
        out = {
            "transitions": [
                {"step": e.step, "rule": e.rule, "layer": e.layer, "state": e.state, "reason": e.reason,
                 "evidence": e.evidence}
                for e in found
            ],
            "incidents": [i.as_dict() for i in incidents],
        }
        sys.stdout.write(json.dumps(out, indent=2, allow_nan=True) + "\n")
        return
    from rich.table import Table

    console = _console()
    if not found:
        console.print(f"no rule would have fired on {cell(run)} ({len(loaded)} rules)")
    else:
        console.print(f"{cell(run)}: what the rules would have done")  # a title would wrap at the table's width
        table = Table()
        for col in ("step", "rule", "layer", "state", "reason"):
            table.add_column(col, overflow="fold")
        for e in found:
            state = f"[{STATE_STYLE.get(e.state, '')}]{e.state}[/]"
            table.add_row(str(e.step), cell(e.rule), cell(e.layer or ""), state, cell(e.reason))
        console.print(table)
    for incident in incidents:
        console.print(incident_text(incident.as_dict()))
    if skipped:
        console.print(f"[dim]not replayed (they depend on the wall clock): {', '.join(skipped)}[/]")


def incident_text(incident: dict) -> str:
    """An incident (``Incident.as_dict()``) as a person reads it: the root cause and its first fix, then what
    it explains."""
    lead = incident["primary"]
    state = incident["state"]  # open | resolved | ended (still open when the run ended)
    span = f"steps {incident['first_step']}-" + ("" if state != "resolved" else str(incident["resolved_step"]))
    lines = [f"[bold]incident {incident['number']}[/] ({span}, {state}): "
             f"[bold]{cell(lead['rule'])}[/] at step {lead['first_step']}: {cell(lead['reason'])}"]
    if incident["fix"]:
        lines.append(f"  first fix: {cell(incident['fix'][0])}")
    if incident["note"]:
        lines.append(f"  {cell(incident['note'])}")
    for label, key in (("consequences", "consequences"), ("also open, not explained by it", "concurrent")):
        if incident.get(key):
            lines.append(f"  {label}: " + ", ".join(f"{cell(e['rule'])}@{e['first_step']}" for e in incident[key]))
    return "\n".join(lines)
