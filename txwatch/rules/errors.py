"""Errors raised while loading rules: each names the file, the line and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from txwatch.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rule file, located as precisely as the loader can."""

    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based, inside a condition when the problem is in one

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        return where + self.message


class RuleError(ConfigError):
    """A rule file (or condition) is invalid.

    ``problems`` lists every problem found, each with ``file``, ``line`` and ``message``; ``str()`` prints them
    one per line as ``file:line: message``.
    """

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def file(self) -> str | None:
        return self.problems[0].file if self.problems else None

    @property
    def line(self) -> int | None:
        return self.problems[0].line if self.problems else None


class ConditionError(ConfigError):
    """A condition does not parse or does not type-check; ``column`` (1-based) points into the condition text."""

    def __init__(self, message: str, line: int = 1, column: int = 1):
        self.message = message
        self.line = line
        self.column = column
        super().__init__(f"column {column}: {message}" if line == 1 else f"line {line}, column {column}: {message}")


def display_path(path: Path | str) -> str:
    """A path as a person would type it: relative to the working directory when it is below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)
