"""`txwatch demo`: train a small GPT-style model a few ways on CPU and watch txwatch diagnose them."""

from __future__ import annotations

import logging
import os

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError

DEMO_PROJECT = "txwatch-demo"


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="Short runs: a few seconds in all (what the tests use)."),
    serve: bool = typer.Option(False, "--serve", help="Afterwards, start the daemon and keep the web page up."),
    db: str = typer.Option(None, "--db", help="Database URL or SQLite path (default: the local database)."),
    port: int = typer.Option(8642, "--port", help="Port for --serve."),
    project: str = typer.Option(DEMO_PROJECT, "--project", help="Project the demo runs are filed under."),
) -> None:
    """Train a tiny GPT four ways (healthy, LR too high, overfitting, slow input) and watch txwatch diagnose them.

    Each diagnosis is printed the moment it fires. Nothing is downloaded and no server is needed.
    """
    _need_training_side()
    from rich.console import Console

    from txwatch.demo.runner import DemoRunner

    console = Console()
    # The demo prints each diagnosis itself, beside the progress bars; the embedded collector's console sink
    # would print it a second time through logging's last-resort handler.
    logging.getLogger("txwatch.alerts.console").addHandler(logging.NullHandler())
    if db:
        os.environ["TXWATCH_DB_URL"] = db  # the embedded collector and the queries below use it
    runner = DemoRunner(console=console, project=project, quick=quick, db_url=db)
    runner.run()
    if serve:
        from txwatch.cli.serve import serve as serve_command

        console.print(f"\n[bold]Web page:[/] http://127.0.0.1:{port}/   (Ctrl-C to stop)")
        serve_command(host="127.0.0.1", port=port, db=db, rules=None, config=None, token=None, log_level="warning")


def _need_training_side() -> None:
    """The demo trains models: without the hooks extra (torch), say so in one line instead of a traceback."""
    try:
        import torch  # noqa: F401
        import txwatch_hooks  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "txwatch_hooks"):
            raise  # the training side is there but something it imports is not: its own error says what
        raise CliError(
            "txwatch demo trains small models, so it needs the training-side hooks (torch), which the collector "
            "installs without: pip install 'txwatch[hooks]' (from a clone of the repository: "
            "pip install ./hooks '.[hooks]')"
        ) from None
