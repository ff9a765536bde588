"""The Typer application every command module registers on."""

from typing import Optional

import typer

app = typer.Typer(
    name="txwatch",
    help="Watch PyTorch training jobs: collect their numbers, diagnose what goes wrong, and say why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"txwatch {version('txwatch')}")
        raise SystemExit(0)  # typer.Exit is swallowed under standalone_mode=False


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print txwatch's version and exit."),
) -> None:
    """Watch PyTorch training jobs: collect their numbers, diagnose what goes wrong, and say why."""
