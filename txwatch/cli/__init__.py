"""The ``txwatch`` command line."""

from __future__ import annotations

import sys

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError
from txwatch.cli.output import plain

# Each module registers its commands on `app` when imported.
from txwatch.cli import compare as _compare  # noqa: F401,E402
from txwatch.cli import db as _db  # noqa: F401,E402
from txwatch.cli import demo as _demo  # noqa: F401,E402
from txwatch.cli import import_cmd as _import  # noqa: F401,E402
from txwatch.cli import query as _query  # noqa: F401,E402
from txwatch.cli import rules_cmd as _rules  # noqa: F401,E402
from txwatch.cli import serve as _serve  # noqa: F401,E402
from txwatch.cli import silence as _silence  # noqa: F401,E402
from txwatch.cli import tag as _tag  # noqa: F401,E402

__all__ = ["app", "main"]


def _click_class(name: str) -> type[BaseException]:
    """Click's exception class ``name`` as this typer raises it: typer 0.12 re-exports click's, later releases
    vendor their own copy (``typer._click``); ``typer.BadParameter`` is public in both and derives from both."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


ClickException = _click_class("ClickException")
UsageError = _click_class("UsageError")


def _command_path(argv: list[str]) -> str:
    """The command the user typed (``txwatch rules replay``): the longest run of subcommand names in ``argv``."""
    command, path = typer.main.get_command(app), ["txwatch"]
    for token in argv:
        sub = getattr(command, "commands", {}).get(token)
        if sub is None:
            if token.startswith("-"):
                continue  # an option of the root (--version); subcommands come before their own options
            break
        command = sub
        path.append(token)
    return " ".join(path)


def _usage_line(exc, argv: list[str]) -> str:
    """A usage error as one line: what was wrong, and the command's --help for how to fix it."""
    message = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    message = message.replace(": Value error, ", ": ")  # pydantic's prefix, as newer typer releases pass it on
    return f"txwatch: error: {message} (see `{_command_path(argv)} --help`)"


def _error(message: str) -> None:
    print(f"txwatch: error: {plain(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error prints one line on stderr and exits non-zero (2 for usage), never a traceback."""
    from txwatch.settings import SettingsError
    from txwatch.store.db import DatabaseError

    try:
        # without standalone mode, click returns typer.Exit's code instead of exiting with it
        result = app(args=argv, prog_name="txwatch", standalone_mode=False)
        if isinstance(result, int) and not isinstance(result, bool):
            return result
    except CliError as exc:
        _error(str(exc))
        return exc.exit_code
    except (SettingsError, DatabaseError) as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("txwatch: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `txwatch` or `txwatch rules` alone: the help is the answer
            text = exc.format_message()  # empty where typer's rich help has already printed itself
            if text.strip():
                print(text, file=sys.stderr)
            return 2
        print(plain(_usage_line(exc, sys.argv[1:] if argv is None else argv)), file=sys.stderr)
        return 2
    except ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        return 1
    return 0
