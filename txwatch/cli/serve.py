"""CLI command: serve (the collector daemon)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on [default: 127.0.0.1]."),
    port: Optional[int] = typer.Option(None, "--port", help="Port [default: 8642; 0 picks a free one]."),
    db: Optional[str] = typer.Option(None, "--db", help="Database URL or SQLite path [default: the local one]."),
    rules: Optional[list[Path]] = typer.Option(None, "--rules", help="A folder of rule files (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A YAML settings file."),
    token: Optional[str] = typer.Option(None, "--token", help="Bearer token (prefer TXWATCH_TOKEN: argv is visible to ps)."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run the collector daemon: ingest from training jobs, store, diagnose, alert, serve queries and /metrics."""
    from txwatch.collector.daemon import Daemon
    from txwatch.errors import ConfigError
    from txwatch.settings import SettingsError, load_settings

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise CliError(f"unknown --log-level {log_level!r}: use debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apscheduler", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        settings = load_settings(host=host, port=port, db_url=db, token=token, config_file=config,
                                 rules_dirs=list(rules) if rules else None)
    except SettingsError as exc:
        raise CliError(" ".join(line.strip() for line in str(exc).splitlines())) from None
    daemon = Daemon(settings)
    try:
        daemon.build()
    except ConfigError as exc:
        daemon.close()
        raise CliError(str(exc).replace("\n", " ")) from None
    daemon.run()
