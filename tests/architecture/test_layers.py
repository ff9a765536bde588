"""The collector's layout is checked, not just described: import-linter's contracts (``.importlinter``), mypy on
the typed seams (``mypy.ini``), and the design note's folder listing against the files that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> None:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{tool} is not installed in {BIN}: install the test extras (pip install -e '.[test]')")
    proc = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout}\n{proc.stderr}"


def test_imports_go_one_way_down_the_layers():
    _run("lint-imports", "--config", str(ROOT / ".importlinter"))


def test_the_typed_seams_type_check():
    _run("mypy", "--config-file", str(ROOT / "mypy.ini"))


def test_the_design_notes_folder_listing_is_the_package():
    text = (ROOT / "docs" / "design.md").read_text()
    block = re.search(r"<!-- layout -->\n```\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no folder listing (a ``` block after <!-- layout -->)"
    listed = set()
    folders: list[str] = []  # the enclosing folders of the current line, outermost first
    for line in block.group(1).splitlines():
        name = line.split("#")[0].strip()
        depth = (len(line) - len(line.lstrip())) // 2
        if not name or depth == 0:  # the txwatch/ line itself
            continue
        del folders[depth - 1:]
        if name.endswith("/"):
            folders.append(name)
        else:
            listed.add("".join(folders) + name)
    real = {
        str(p.relative_to(ROOT / "txwatch"))
        for p in (ROOT / "txwatch").rglob("*.py")
        if "migrations" not in p.parts
    }
    assert listed == real, f"not in the listing: {sorted(real - listed)}; listed but absent: {sorted(listed - real)}"
