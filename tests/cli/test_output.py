"""txwatch.cli.output: the escaping every printed text goes through (the commands' own tests show it end to end)."""

from __future__ import annotations

import csv
import io

import pytest
from rich.console import Console

from txwatch.cli import output


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_a_cell_that_a_spreadsheet_would_run_starts_with_a_quote(text, capsys):
    output.print_csv([{"v": text, "n": -1.5}], ["v", "n"])
    [row] = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert not row["v"].startswith(("=", "+", "-", "@", "\t", "\r")) and row["n"] == "-1.5"
    assert row["v"] in ("'" + text, "\\r" + text[1:])  # a quote, or the CR spelled out like every control code


def test_plain_text_is_left_alone(capsys):
    output.print_csv([{"v": "lr 1e-3, [x] ok"}], ["v"])
    assert capsys.readouterr().out.splitlines()[1] == '"lr 1e-3, [x] ok"'


def test_control_codes_are_spelled_out_and_markup_printed_as_written():
    text = "a\x1b[31mb\x9bc\x00\u202e[/][bold]\nnext"
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(output.cell(text))
    assert console.file.getvalue() == "a\\x1b[31mb\\x9bc\\x00\\u202e[/][bold]\nnext\n"
