"""The Typer application every command module registers on."""

import typer

app = typer.Typer(
    name="txwatch",
    help="Watch PyTorch training jobs: collect their numbers, diagnose what goes wrong, and say why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
