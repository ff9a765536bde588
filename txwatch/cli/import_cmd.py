"""``txwatch import tensorboard LOGDIR``: past TensorBoard logs stored as runs, and what the rules would have said.

The runs go into a database (the local one, or ``--db``: a team's PostgreSQL) through the collector's own write
path, without the live rule engine (months of old logs must not reach Slack); then the rules are replayed over
each run (``txwatch.rules.replay``) and what would have fired is printed, step by step.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError
from txwatch.cli.output import cell, console
from txwatch.cli.source import Db

import_app = typer.Typer(help="Import other tools' training logs as runs, and replay the rules over them.",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("tensorboard")
def tensorboard(
    logdir: Path = typer.Argument(..., help="A TensorBoard log folder: each folder under it with event files is a run."),
    maps: Optional[list[str]] = typer.Option(None, "--map", help=(
        "TAG=NAME: store the TensorBoard tag TAG as the series NAME (e.g. --map 'Loss/train=loss'); "
        "common tags (loss, train/loss, eval_loss, learning_rate, grad_norm...) are mapped already.")),
    project: str = typer.Option("tensorboard", "--project", help="The project the runs go in."),
    prefix: Optional[str] = typer.Option(None, "--prefix", help="Start each run's name with this (PREFIX.folder)."),
    rules: Optional[list[Path]] = typer.Option(None, "--rules", help="Also replay the rules in this folder."),
    db: Db = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON: each run, its series and what would have fired."),
) -> None:
    """Store TensorBoard event files as runs and print what txwatch's rules would have fired, and when."""
    from txwatch.wire.batch import NAME_PATTERN
    from txwatch.importers.tensorboard import ImportProblem, batches, parse_map, read_logdir

    if not re.match(NAME_PATTERN, project):
        raise CliError(f"--project {project!r}: use letters, digits and ._:@+=- (no '/' or spaces)")
    try:
        import tensorboard as _  # noqa: F401
    except ImportError:
        raise CliError('reading TensorBoard logs needs the tensorboard package: pip install "txwatch[tensorboard]"')
    try:
        runs = read_logdir(logdir.expanduser().resolve(), parse_map(maps or []), prefix)
    except ImportProblem as exc:
        raise CliError(str(exc)) from None
    loaded = _rules(rules)
    store = _Store(db)
    try:
        report = []
        for run in runs:
            stored = store.put(list(batches(run, project)))
            fired = store.replay(f"{project}/{run.name}", loaded) if stored else []
            report.append({"run": run.name, "project": project, "folder": str(run.folder), "points": run.points,
                           "series_from": run.sources, "skipped_tags": run.skipped, "fired": fired})
    finally:
        store.close()
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, allow_nan=True) + "\n")
        return
    _print(report, len(loaded))


def _rules(paths: Optional[list[Path]]):
    from txwatch.rules import RuleError, load_rules

    try:
        return load_rules(list(paths or []), builtin=True)
    except RuleError as exc:
        raise CliError(f"invalid rules:\n{exc}\n(check them with `txwatch rules check DIR`)") from None


class _Store:
    """The database the runs go into (created and migrated if new) and the collector's write path on it."""

    def __init__(self, db: str | None):
        from txwatch.ingest.queue import Collector
        from txwatch.store.db import make_engine, redact, session_factory, upgrade

        self.engine = make_engine(db)
        try:
            upgrade(self.engine)
        except Exception as exc:
            self.engine.dispose()
            raise CliError(f"cannot open the database at {redact(str(self.engine.url))}: "
                           f"{exc.__class__.__name__}: {exc}") from None
        self.sessions = session_factory(self.engine)
        self.collector = Collector(self.sessions)

    def put(self, wire: list[dict]) -> bool:
        from txwatch.wire.batch import Batch

        for batch in wire:
            self.collector.ingest(Batch.model_validate(batch))
        return bool(wire)

    def replay(self, ref: str, loaded) -> list[dict]:
        from txwatch.rules import replay

        return [{"step": e.step, "rule": e.rule, "layer": e.layer, "state": e.state, "reason": e.reason}
                for e in replay(self.sessions, ref, loaded, include_pending=False)]

    def close(self) -> None:
        self.engine.dispose()


def _print(report: list[dict], rules: int) -> None:
    out = console()
    for run in report:
        sources = ", ".join(f"{cell(n)} <- {cell(t)}" for n, t in sorted(run["series_from"].items()))
        out.print(f"[bold]{cell(run['project'])}/{cell(run['run'])}[/] ({cell(run['folder'])}): "
                  f"{run['points']} points; {sources or 'no scalars'}")
        if run["skipped_tags"]:
            out.print(f"  [dim]not imported: {cell(', '.join(run['skipped_tags']))}[/]")
        if not run["fired"]:
            out.print(f"  no rule would have fired ({rules} rules)")
        for e in run["fired"]:
            style = "bold red" if e["state"] == "firing" else "green"
            layer = f" [{cell(e['layer'])}]" if e["layer"] else ""
            out.print(f"  step {e['step']}: [{style}]{cell(e['rule'])} {e['state']}[/]{layer}: {cell(e['reason'])}")
