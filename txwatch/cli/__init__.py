"""The ``txwatch`` command line."""

from __future__ import annotations

import sys

from txwatch.cli.app import app
from txwatch.cli.errors import CliError

# Each module registers its commands on `app` when imported.
from txwatch.cli import db as _db  # noqa: F401,E402
from txwatch.cli import demo as _demo  # noqa: F401,E402
from txwatch.cli import query as _query  # noqa: F401,E402
from txwatch.cli import rules_cmd as _rules  # noqa: F401,E402
from txwatch.cli import serve as _serve  # noqa: F401,E402
from txwatch.cli import silence as _silence  # noqa: F401,E402

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; known errors print one line on stderr and exit non-zero, never a traceback."""
    from txwatch.settings import SettingsError
    from txwatch.store.db import DatabaseError

    try:
        # without standalone mode, click returns typer.Exit's code instead of exiting with it
        result = app(args=argv, prog_name="txwatch", standalone_mode=False)
        if isinstance(result, int) and not isinstance(result, bool):
            return result
    except CliError as exc:
        print(f"txwatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (SettingsError, DatabaseError) as exc:
        print(f"txwatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("txwatch: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    return 0
