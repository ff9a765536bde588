"""The two distributions point the right way: the collector (`pip install .` at the repository root) pulls no
torch, and the training side comes with it only when asked for (`txwatch[hooks]`). pip resolves each install as a
user's would (every package, none taken from this environment), at the versions requirements/lock.txt pins,
through the same index scripts/setup-env installs from, and reports what it would install without installing it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.deploy.conftest import REPO

LOCK = REPO / "requirements" / "lock.txt"
# Resolving some fifty packages' metadata from the index takes 10 to 20 s each time on this machine.
RESOLVE_TIMEOUT_S = 300


def _project_copy(source: Path, dest: Path) -> Path:
    """The files pip reads a project's metadata from (static pyproject.toml, and the readme it names), copied so
    the metadata build writes its egg-info into ``dest``, not into the checkout."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(source / name, dest / name)
    return dest


def _would_install(cwd: Path, *targets: str) -> set[str]:
    """The names `pip install TARGETS` would install into an empty environment, from pip's installation report."""
    report = cwd / "report.json"
    # --ignore-installed: resolve the whole tree, as into a fresh image; --no-build-isolation: the metadata
    # build uses this environment's setuptools rather than fetching one.
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation",
               "--quiet", "--disable-pip-version-check", "--report", str(report), "-c", str(LOCK), *targets]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_the_collector_installs_without_torch_and_the_hooks_extra_brings_it(tmp_path):
    _project_copy(REPO, tmp_path / "txwatch")
    _project_copy(REPO / "hooks", tmp_path / "hooks")

    collector = _would_install(tmp_path, "./txwatch")
    assert {"txwatch", "fastapi", "sqlalchemy", "uvicorn"} <= collector, collector
    assert not collector & {"torch", "txwatch-hooks", "nvidia-ml-py", "psutil"}, sorted(collector)
    assert not any(name.startswith("nvidia-") for name in collector), sorted(collector)

    # The same report does show torch when the training side is asked for: the check above can fail.
    with_hooks = _would_install(tmp_path, "./hooks", "./txwatch[hooks]")
    assert {"torch", "txwatch-hooks"} <= with_hooks, sorted(with_hooks)
    assert with_hooks - collector >= {"torch", "psutil", "nvidia-ml-py"}


@pytest.mark.parametrize("use", [
    "import txwatch; txwatch.watch",
    "from txwatch import Monitor",
    "import txwatch.integrations.lightning",
])
def test_without_the_hooks_the_training_side_names_the_extra_to_install(use):
    """A collector installed without the hooks (as the image is; tests/deploy/test_dockerfile.py serves from one):
    the training side's names fail saying which extra brings them."""
    probe = f"import sys; sys.modules['torch'] = None; sys.modules['txwatch_hooks'] = None; {use}"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.rstrip().splitlines()[-1].startswith("ModuleNotFoundError: txwatch.watch, Monitor"), \
        result.stderr
    assert "pip install 'txwatch[hooks]'" in result.stderr
