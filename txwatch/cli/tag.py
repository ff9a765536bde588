"""``txwatch tag RUN TAG...``: add tags to a stored run (``--remove`` takes them off), in a database or a daemon."""

from __future__ import annotations

from contextlib import closing
from typing import Annotated

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError
from txwatch.cli.output import cell, console
from txwatch.cli.source import Db, Endpoint, Token, open_source


@app.command()
def tag(
    run: str = typer.Argument(..., help="RUN or PROJECT/RUN."),
    tags: list[str] = typer.Argument(..., help="Tags: words of letters, digits and ._:@+=/-."),
    remove: Annotated[bool, typer.Option("--remove", help="Take these tags off instead.")] = False,
    endpoint: Endpoint = None, db: Db = None, token: Token = None,
) -> None:
    """Tag a run, to find it again with `txwatch runs --where "tags has 'TAG'"`; prints its tags."""
    from txwatch.store.tags import BadTag, check

    try:
        check(tags)
    except BadTag as exc:
        raise CliError(str(exc)) from None
    add, off = ([], tags) if remove else (tags, [])
    with closing(open_source(endpoint, db, token)) as src:
        project, name = src.resolve(run)
        now = src.tag(project, name, add, off)
    console().print(f"{cell(project)}/{cell(name)}: " + (" ".join(cell(t) for t in now) or "no tags"))
