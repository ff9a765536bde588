"""What the CLI prints, made safe: text from runs (names, hosts, configs, exception messages, rule texts) is data
that a training job or anyone able to reach the collector wrote, so it is escaped before it reaches a terminal
(control and escape codes shown as ``\\x1b``, never acted on), rich's markup parser (``[/]`` printed as written,
never a crash) or a spreadsheet (a cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR is not a formula).
JSON needs none of this: its writer escapes control characters itself."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from typing import Any, Iterable

from rich.markup import escape as _markup_escape

# C0 controls but newline and tab, DEL, C1 controls (0x9b is a one-byte CSI), and the Unicode bidi overrides that
# can make a line read differently from what it holds.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
WIDE = 10_000  # columns when the output is not a terminal: tables print full names, never cut or wrapped


def plain(value: Any) -> str:
    """``value`` as text with every control character spelled out: safe to write to a terminal."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], str(value))


def cell(value: Any) -> str:
    """``value`` as rich markup that prints exactly as the (terminal-safe) text."""
    return _markup_escape(plain(value))


def console():
    """The console every command prints through: the terminal's width, or unlimited when piped."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=WIDE)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, allow_nan=True, indent=2) + "\n")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell no spreadsheet runs as a formula (OWASP's advice: a leading quote)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value  # a negative number is a number, not a formula
    text = json.dumps(value, allow_nan=True) if isinstance(value, (dict, list)) else str(value)
    return spreadsheet_safe(plain(text))


def columns(rows: list[dict], default: Iterable[str]) -> list[str]:
    """Every key the rows carry, in first-seen order (``default`` when there are no rows): the JSON's keys."""
    if not rows:
        return list(default)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def print_csv(rows: list[dict], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_value(v) for k, v in row.items()})
    sys.stdout.write(buf.getvalue())
