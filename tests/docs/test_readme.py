"""Everything README.md shows is run here, as a newcomer would run it, in a fresh home directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.docs.readme_blocks import README, blocks, commands, readme_rules_table, rules_table

ROOT = README.parent
CI_SCRIPT = ROOT / ".ci" / "run"


def test_every_code_block_is_tested():
    untested = [f"README.md:{b.line} ({b.lang})" for b in blocks() if b.kind == "untested"]
    assert not untested, f"code blocks without a readme-test marker: {untested}"


def test_file_blocks_are_the_files_the_tests_run():
    for b in blocks():
        if b.kind == "file":
            path = ROOT / b.arg
            assert path.is_file(), f"README.md:{b.line} names {b.arg}, which does not exist"
            assert b.text == path.read_text(), f"README.md:{b.line} differs from {b.arg}"


def test_ci_runs_the_readme_test_command():
    (ci_block,) = [b for b in blocks() if b.kind == "ci"]
    (command,) = commands(ci_block)
    assert command in CI_SCRIPT.read_text()


def test_rules_table_is_the_builtin_rules():
    assert readme_rules_table() == rules_table(), "refresh it: python tests/docs/readme_blocks.py"


def test_env_blocks_name_real_settings():
    from txwatch.settings import Settings

    for b in blocks():
        if b.kind != "env":
            continue
        for name in re.findall(r"export (TXWATCH_\w+)=", b.text):
            field = name.removeprefix("TXWATCH_").lower()
            assert field in Settings.model_fields, f"README.md:{b.line}: {name} is not a setting"


def _free_port_from(command: str) -> int:
    return int(re.search(r"--port (\d+)", command).group(1))


@pytest.mark.slow
def test_readme_walkthrough(tmp_path):
    """Run the README top to bottom: demo, examples, torchrun, a daemon and the queries against it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXWATCH_")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               COLUMNS="160", PYTHONUNBUFFERED="1")
    daemons: list[subprocess.Popen] = []

    def run(command: str, where: str) -> None:
        proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{where}: `{command}` exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{where}: `{command}` printed a traceback\n{proc.stderr[-3000:]}"

    try:
        for b in blocks():
            where = f"README.md:{b.line}"
            if b.kind == "run":
                for command in commands(b):
                    run(command, where)
            elif b.kind == "file" and b.arg.endswith(".py"):
                run(f"{sys.executable} {b.arg}", where)
            elif b.kind == "serve":
                (command,) = commands(b)
                port = _free_port_from(command)
                daemons.append(subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert daemons[-1].poll() is None, f"{where}: the daemon exited: {daemons[-1].stderr.read()}"
                    assert time.monotonic() < deadline, f"{where}: the daemon did not answer /healthz"
                    time.sleep(0.3)
    finally:
        for d in daemons:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()
    for d in daemons:
        assert d.returncode == 0, f"the daemon did not shut down cleanly on SIGTERM (exit {d.returncode})"


def test_readme_has_two_setup_commands_first():
    text = README.read_text()
    first_blocks = [b for b in blocks() if b.lang == "sh"][:2]
    assert [commands(b)[0].split()[0] for b in first_blocks] == ["scripts/demo", "scripts/test"]
    assert Path(ROOT / "scripts" / "demo").stat().st_mode & 0o111
    assert text.index("scripts/demo") < text.index("## Attach it")
