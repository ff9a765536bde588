"""Pull the runnable blocks out of README.md.

Each fenced block preceded by a marker comment is run by tests/docs/test_readme.py:

    <!-- readme-test: run -->           the ```sh lines, one after another, each must exit 0
    <!-- readme-test: python -->        the ```python block, run as a script
    <!-- readme-test: serve -->         a daemon command: started in the background until /healthz answers
    <!-- readme-test: ci -->            the test-suite command itself: CI (.ci/run) runs exactly this line
    <!-- readme-test: file PATH -->     a block that must equal the file PATH in the repository (it is tested there)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    kind: str
    arg: str
    lang: str
    text: str
    line: int


def blocks(path: Path = README) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    pending: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        m = MARKER.search(lines[i])
        if m:
            pending = (m.group(1), m.group(2))
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f and f.group(1):
            start = i
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            kind, arg = pending if pending else ("untested", "")
            found.append(Block(kind, arg, f.group(1), "\n".join(body) + "\n", start + 1))
            pending = None
        i += 1
    return found


def commands(block: Block) -> list[str]:
    """The shell commands of a block: comments and blank lines dropped, backslash continuations joined."""
    out, cur = [], ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append((cur + line).strip())
        cur = ""
    return out


RULES_START, RULES_END = "<!-- rules-table:start -->", "<!-- rules-table:end -->"


def rules_table() -> str:
    """The README's built-in rules table, rendered from the rule files themselves."""
    from txwatch.rules import load_rules

    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    rows = ["| id | severity | symptom | likely cause | first fix |", "|---|---|---|---|---|"]
    for rule in sorted(load_rules([], builtin=True), key=lambda r: r.id):
        fix = rule.fix[0] if rule.fix else ""
        rows.append(f"| `{rule.id}` | {rule.severity} | {cell(rule.symptom)} | {cell(rule.cause)} | {cell(fix)} |")
    return "\n".join(rows)


def readme_rules_table(path: Path = README) -> str:
    text = path.read_text()
    return text.split(RULES_START, 1)[1].split(RULES_END, 1)[0].strip()


def write_rules_table(path: Path = README) -> None:
    text = path.read_text()
    head, rest = text.split(RULES_START, 1)
    _, tail = rest.split(RULES_END, 1)
    path.write_text(f"{head}{RULES_START}\n{rules_table()}\n{RULES_END}{tail}")


if __name__ == "__main__":  # python tests/docs/readme_blocks.py: refresh the rules table in README.md
    write_rules_table()
