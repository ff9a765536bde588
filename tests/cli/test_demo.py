"""`txwatch demo` on a collector installed without the training side: one line naming the extra, no traceback."""

from __future__ import annotations

import sys

import pytest

from txwatch.cli import main


@pytest.mark.parametrize("missing", ["torch", "txwatch_hooks"])
def test_demo_without_the_hooks_extra_says_what_to_install(missing, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as if not installed
    assert main(["demo", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("txwatch: error: txwatch demo trains small models")
    assert "pip install ./hooks '.[hooks]'" in err
