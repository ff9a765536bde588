"""CLI commands: rules list, rules check, rules replay."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError

rules_app = typer.Typer(
    help="Diagnosis rules: list what is loaded, check rule files, replay rules over a stored run.",
    no_args_is_help=True,
)
app.add_typer(rules_app, name="rules")

RULES = typer.Option(None, "--rules", help="A folder (or file) of your own rules; repeat for several.")
NO_BUILTIN = typer.Option(False, "--no-builtin", help="Leave out the built-in rules.")
DB = typer.Option(None, "--db", envvar="TXWATCH_DB_URL", help="Database URL or SQLite path [default: the local one].")
JSON = typer.Option(False, "--json", help="Print JSON.")
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATE_STYLE = {"firing": "bold red", "pending": "yellow", "resolved": "green", "cancelled": "dim"}


def _load(rules: Optional[list[Path]], no_builtin: bool):
    from txwatch.rules import RuleError, load_rules

    try:
        return load_rules(list(rules or []), builtin=not no_builtin)
    except RuleError as exc:
        raise CliError(f"invalid rules:\n{exc}\n(check them with `txwatch rules check DIR`)") from None


def _console():
    from rich.console import Console

    return Console()


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
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(loaded)} rules", show_lines=False)
    for col in ("id", "severity", "symptom", "for", "scope", "source"):
        table.add_column(col, overflow="fold", no_wrap=col in ("id", "severity", "for"))
    for r in sorted(loaded, key=lambda r: r.id):
        sev = f"[{SEVERITY_STYLE.get(r.severity, '')}]{r.severity}[/]"
        source = "built-in" if r.builtin else escape(f"{r.source}:{r.line}")
        hold = "at once" if r.hold.zero else str(r.hold)
        table.add_row(r.id, sev, escape(r.symptom), hold, r.scope, source)
    _console().print(table)


@rules_app.command("check")
def check_rules(paths: list[Path] = typer.Argument(..., help="Rule folders or files to validate.")) -> None:
    """Validate rule files: print each problem as file:line: message and exit 1 if there is any."""
    from txwatch.rules import check_paths

    loaded, problems = check_paths(paths)
    if problems:
        for p in problems:
            sys.stderr.write(f"{p}\n")
        sys.stderr.write(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found\n")
        raise SystemExit(1)  # typer.Exit is swallowed under standalone_mode=False
    if not loaded:
        sys.stderr.write(f"no rule files (*.yaml, *.yml) in {', '.join(map(str, paths))}\n")
        raise SystemExit(1)  # typer.Exit is swallowed under standalone_mode=False
    sys.stdout.write(f"{len(loaded)} rule{'s' if len(loaded) != 1 else ''} OK: {', '.join(r.id for r in loaded)}\n")


@rules_app.command("replay")
def replay_run(
    run: str = typer.Argument(..., help="The run: NAME (unique across projects) or PROJECT/NAME."),
    rules: Optional[list[Path]] = RULES,
    no_builtin: bool = NO_BUILTIN,
    db: Optional[str] = DB,
    as_json: bool = JSON,
    quiet_pending: bool = typer.Option(False, "--no-pending", help="Show only firing and resolved."),
) -> None:
    """Run the rules over a stored run and print what would have fired at which step (nothing is written)."""
    from txwatch.rules import RunNotFound, replay
    from txwatch.store.db import is_current, make_engine, normalize_url, redact
    from txwatch.store.db import session_factory as make_sessions

    loaded = _load(rules, no_builtin)
    url = normalize_url(db)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise CliError(f"no database at {url.removeprefix('sqlite:///')}: pass --db, or run a training first")
    engine = make_engine(url)
    try:
        try:
            current = is_current(engine)
        except Exception as exc:
            raise CliError(f"cannot open the database {redact(url)}: {exc.__class__.__name__}: {exc}") from None
        if not current:
            raise CliError(f"the database {redact(url)} is not at the current schema: run `txwatch db upgrade`")
        try:
            found = replay(make_sessions(engine), run, loaded, include_pending=not quiet_pending)
        except RunNotFound as exc:
            raise CliError(str(exc), exit_code=1) from None
    finally:
        engine.dispose()
    skipped = sorted(r.id for r in loaded if r.time_based)
    if as_json:
        out = [
            {"step": e.step, "rule": e.rule, "layer": e.layer, "state": e.state, "reason": e.reason, "evidence": e.evidence}
            for e in found
        ]
        sys.stdout.write(json.dumps(out, indent=2, allow_nan=True) + "\n")
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if not found:
        console.print(f"no rule would have fired on {escape(run)} ({len(loaded)} rules)")
    else:
        table = Table(title=f"{escape(run)}: what the rules would have done")
        for col in ("step", "rule", "layer", "state", "reason"):
            table.add_column(col, overflow="fold")
        for e in found:
            state = f"[{STATE_STYLE.get(e.state, '')}]{e.state}[/]"
            table.add_row(str(e.step), e.rule, escape(e.layer or ""), state, escape(e.reason))
        console.print(table)
    if skipped:
        console.print(f"[dim]not replayed (they depend on the wall clock): {', '.join(skipped)}[/]")
