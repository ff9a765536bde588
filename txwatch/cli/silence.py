"""CLI commands: silence (registered on the shared app)."""

from txwatch.cli.app import app  # noqa: F401
