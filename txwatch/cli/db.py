"""CLI commands: db upgrade, db current."""

from __future__ import annotations

from typing import Optional

import typer

from txwatch.cli.app import app
from txwatch.cli.output import cell, console

db_app = typer.Typer(help="The run-history database: schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DB = typer.Option(None, "--db", envvar="TXWATCH_DB_URL", help="Database URL or SQLite path [default: the local one].")


@db_app.command("upgrade")
def upgrade(db: Optional[str] = DB) -> None:
    """Create or upgrade the schema to the current version (the daemon also does this on start)."""
    from txwatch.store.db import current_revision, head_revision, make_engine, redact
    from txwatch.store.db import upgrade as do_upgrade

    engine = make_engine(db)
    try:
        before = current_revision(engine)
        do_upgrade(engine)
        where = redact(str(engine.url))
    finally:
        engine.dispose()
    head = head_revision()
    msg = f"already at {head}" if before == head else f"upgraded {before or 'empty'} -> {head}"
    console().print(f"database {cell(where)}: {msg}")


@db_app.command("current")
def current(db: Optional[str] = DB) -> None:
    """Print the schema version of the database and whether it is current (exit 1 when it is not)."""
    from txwatch.cli.errors import CliError
    from txwatch.store.db import current_revision, head_revision, make_engine, redact

    engine = make_engine(db)
    try:
        where = redact(str(engine.url))
        try:
            rev = current_revision(engine)
        except Exception as exc:
            raise CliError(f"cannot open the database at {where}: {exc.__class__.__name__}") from None
    finally:
        engine.dispose()
    head = head_revision()
    if rev == head:
        console().print(f"database {cell(where)}: at {rev} (current)")
        return
    console().print(f"database {cell(where)}: at {rev or 'empty'}, current is {head}: run `txwatch db upgrade`")
    raise SystemExit(1)  # typer.Exit would be swallowed by main() (standalone_mode=False)
