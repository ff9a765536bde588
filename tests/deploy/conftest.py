"""Fixtures for the deploy/ tests: the repository's deploy folder, external binaries (Debian's prometheus,
promtool, prometheus-alertmanager, amtool, systemd-analyze), and real servers on loopback free ports: the
collector (`txwatch serve`), Prometheus and Alertmanager."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Generous: two cores shared by several test workers; a daemon that needs longer is broken, not slow.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def require_binary(name: str) -> str:
    """The path of ``name``; in CI a missing binary fails the test (scripts/services installs it), elsewhere
    the test is skipped saying how to get it."""
    path = shutil.which(name)
    if path:
        return path
    package = {
        "promtool": "prometheus",
        "amtool": "prometheus-alertmanager",
        "systemd-analyze": "systemd",
    }.get(name, name)
    msg = f"{name} is not installed (Debian package {package}: apt-get install -y {package}, or run scripts/services)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


@dataclass
class Server:
    """A server process started by a test: its base URL and its log (shown when a test fails)."""

    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)


def spawn_server(
    name: str,
    argv: list[str],
    url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
) -> Server:
    """Start ``argv`` without waiting for it (see ``wait_ready``)."""
    log_path = log_dir / f"{name}.log"
    # Only the settings the test gives: none of the caller's TXWATCH_* variables, no real home directory.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TXWATCH_")}
    full_env.update({"HOME": str(log_dir), "XDG_DATA_HOME": str(log_dir / "data")})
    full_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=log_dir)
    return Server(name, url, proc, log_path, env or {})


def wait_ready(server: Server, ready_path: str, headers: dict[str, str] | None = None) -> Server:
    """Wait until GET ``ready_path`` answers 200; stop the server and fail with its log if it does not."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"{server.name} exited with {server.proc.returncode} before it was ready:\n{server.log()}")
        try:
            r = httpx.get(server.url + ready_path, timeout=2.0, headers=headers)
            if r.status_code == 200:
                return server
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"{server.name} was not ready at {server.url}{ready_path} after {START_TIMEOUT_S}s ({last}):\n"
                f"{server.log()}")


def start_server(
    name: str,
    argv: list[str],
    url: str,
    ready_path: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Server:
    """Start ``argv`` and wait until GET ``url + ready_path`` answers 200; fail with the process log if not."""
    return wait_ready(spawn_server(name, argv, url, log_dir, env), ready_path, headers)


@pytest.fixture
def servers(tmp_path) -> Iterator[list[Server]]:
    """Everything a test started, stopped at its end (and each one's log printed if the test failed)."""
    started: list[Server] = []
    yield started
    for server in reversed(started):
        server.stop()


def spawn_collector(db_url: str, log_dir: Path, name: str = "collector", **settings: object) -> Server:
    """``txwatch serve`` on a free loopback port, not yet waited for; settings become TXWATCH_* variables."""
    port = free_port()
    env = {f"TXWATCH_{k.upper()}": str(v) for k, v in settings.items()}
    argv = [sys.executable, "-m", "txwatch", "serve", "--host", "127.0.0.1", "--port", str(port), "--db", db_url]
    return spawn_server(name, argv, f"http://127.0.0.1:{port}", log_dir, env)


def launch_collector(db_url: str, log_dir: Path, name: str = "collector", **settings: object) -> Server:
    """``txwatch serve`` on a free loopback port, ready; settings given as TXWATCH_* variables (``token="..."``)."""
    return wait_ready(spawn_collector(db_url, log_dir, name, **settings), "/healthz")


def launch_prometheus(config: dict, log_dir: Path, name: str = "prometheus") -> Server:
    """Debian's Prometheus on a free loopback port with ``config`` (written to a file in ``log_dir``)."""
    binary = require_binary("prometheus")
    port = free_port()
    conf = log_dir / f"{name}.yml"
    conf.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        binary,
        f"--config.file={conf}",
        f"--storage.tsdb.path={log_dir / (name + '-data')}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    return start_server(name, argv, f"http://127.0.0.1:{port}", "/-/ready", log_dir)


@pytest.fixture
def start_collector(servers, tmp_path) -> Callable[..., Server]:
    """Start ``txwatch serve`` on a free loopback port: ``start_collector(db_url, **TXWATCH_settings)``."""

    def start(db_url: str, name: str = "collector", **settings: object) -> Server:
        server = launch_collector(db_url, tmp_path, name, **settings)
        servers.append(server)
        return server

    return start


@pytest.fixture
def start_prometheus(servers, tmp_path) -> Callable[[dict], Server]:
    """Start Debian's Prometheus on loopback with the given configuration (a dict, written to a temp file)."""

    def start(config: dict, name: str = "prometheus") -> Server:
        server = launch_prometheus(config, tmp_path, name)
        servers.append(server)
        return server

    return start


@pytest.fixture
def start_alertmanager(servers, tmp_path) -> Callable[[Path], Server]:
    """Start Debian's Alertmanager on loopback with the given configuration file, clustering off."""
    binary = require_binary("prometheus-alertmanager")

    def start(config_file: Path, name: str = "alertmanager") -> Server:
        port = free_port()
        storage = tmp_path / f"{name}-data"
        storage.mkdir()
        argv = [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: a single instance
            "--log.level=warn",
        ]
        server = start_server(name, argv, f"http://127.0.0.1:{port}", "/-/ready", tmp_path)
        servers.append(server)
        return server

    return start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the logs of the servers a failed test started, so a failure explains itself."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        started = getattr(item, "funcargs", {}).get("servers") or []
        for server in started:
            report.sections.append((f"{server.name} log", server.log()))


def settings_from_environment(env: dict[str, str], monkeypatch):
    """The collector's settings as `txwatch serve` would build them from exactly these environment variables
    (raises txwatch.settings.SettingsError naming any it rejects)."""
    from txwatch.settings import load_settings

    for key in list(os.environ):
        if key.startswith("TXWATCH_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def compose_interpolate(value: str, variables: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} interpolation, with ``variables`` as the shell."""
    import re

    variables = variables or {}

    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if variables.get(name):
            return variables[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)
