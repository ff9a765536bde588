"""deploy/Dockerfile, checked without a Docker engine (none runs here or in CI): parsed into stages and
instructions, each promise of deploy/README.md asserted (multi-stage, slim, non-root, HEALTHCHECK on /healthz,
settings from the environment only), the build's own steps run where they can run outside Docker, and the
health-check script exercised against a live collector."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, REPO, free_port, start_server
from txwatch.settings import DEFAULT_PORT, Settings

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
HEALTHCHECK_PY = DEPLOY / "healthcheck.py"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: comments dropped, continuation lines joined."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continued instruction are skipped
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    for line, instr in logical:
        keyword, _, rest = instr.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, f"line {line}: cannot parse FROM {rest!r}"
            base = re.sub(r"\$\{(\w+)\}", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
            stages.append(Stage(base=base, name=m.group(2)))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            assert stages, f"line {line}: {keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, rest, line))
    return args, stages


def env_pairs(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr in stage.all("ENV"):
        for token in shlex.split(instr.args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def test_two_stages_on_one_slim_python_base(stages):
    assert [s.name for s in stages] == ["build", "runtime"]
    build, runtime = stages
    assert build.base == runtime.base, "the venv copied between stages needs the same Python at the same path"
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", runtime.base), runtime.base


def test_runtime_stage_carries_only_the_built_environment(stages):
    build, runtime = stages
    copies = [i.args for i in runtime.all("COPY")]
    assert "--from=build /opt/txwatch /opt/txwatch" in copies
    for run in runtime.all("RUN"):
        assert "pip install" not in run.args and "apt-get" not in run.args, \
            f"line {run.line} builds in the runtime stage"
    assert any("pip install" in r.args for r in build.all("RUN"))


def test_runs_as_a_non_root_user_the_image_creates(stages):
    runtime = stages[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage never switches away from root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-zero uid lets Kubernetes' runAsNonRoot verify it"
    created = " ".join(r.args for r in runtime.all("RUN"))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    # The instruction order matters: everything after USER runs unprivileged, including CMD.
    assert runtime.instructions.index(users[-1]) < runtime.instructions.index(runtime.all("CMD")[-1])


def test_healthcheck_probes_healthz_with_the_shipped_script(stages):
    runtime = stages[-1]
    (check,) = runtime.all("HEALTHCHECK")
    options, _, cmd = check.args.partition("CMD ")
    argv = json.loads(cmd)
    assert argv == ["python", "/opt/txwatch/healthcheck.py", "/healthz"]
    assert "--timeout=" in options and "--interval=" in options
    assert "deploy/healthcheck.py /opt/txwatch/healthcheck.py" in [i.args for i in runtime.all("COPY")]


def test_serves_with_settings_from_the_environment_only(stages):
    runtime = stages[-1]
    assert json.loads(runtime.all("ENTRYPOINT")[-1].args) == ["txwatch"]
    assert json.loads(runtime.all("CMD")[-1].args) == ["serve"]
    assert runtime.all("EXPOSE")[-1].args == str(DEFAULT_PORT)
    env = env_pairs(runtime)
    settings = {f"TXWATCH_{name.upper()}" for name in Settings.model_fields}
    txwatch_env = {k for k in env if k.startswith("TXWATCH_")}
    assert txwatch_env <= settings, txwatch_env - settings
    assert env["TXWATCH_PORT"] == str(DEFAULT_PORT)
    assert "TXWATCH_TOKEN" not in env, "a token baked into an image is a token published with it"
    assert env["PATH"].startswith("/opt/txwatch/bin:")


def _pattern(pat: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: anchored at the context root, '*' within one path segment, '**' across
    segments (Go's filepath.Match plus '**', as BuildKit reads it)."""
    pat, out, i = pat.strip("/"), "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] in "*?":
            out, i = out + ("[^/]*" if pat[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out + "$")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matches a path or one of its parent folders; the last match wins; '!'
    re-includes."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        rx = _pattern(pat[1:] if negate else pat)
        if any(rx.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_matching_follows_docker_rules():
    patterns = ["*", "!txwatch/", "!pyproject.toml", "**/__pycache__"]
    assert _ignored(".venv/bin/python", patterns) and _ignored("hooks/pyproject.toml", patterns)
    assert not _ignored("pyproject.toml", patterns) and not _ignored("txwatch/cli/app.py", patterns)
    assert _ignored("txwatch/cli/__pycache__/app.cpython-311.pyc", patterns)


def test_every_copied_path_exists_and_is_in_the_build_context(stages):
    patterns = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert "*" in patterns, "the context should be an allow-list: everything else (.venv, .git) stays out"
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from="):
                continue
            *sources, _dest = shlex.split(copy.args)
            for source in sources:
                rel = source.rstrip("/")
                assert (REPO / rel).exists(), f"line {copy.line}: COPY {source}: no such path in the repository"
                assert not _ignored(rel, patterns), f"line {copy.line}: {source} is excluded by {DOCKERIGNORE.name}"
    assert _ignored(".venv", patterns) and _ignored(".git", patterns) and _ignored("tests", patterns)


def test_the_build_installs_the_collector_without_torch(stages, tmp_path):
    """Run the build's requirements step as the image does: the collector's dependencies as declared, which hold
    neither the hooks nor torch (tests/deploy/test_distributions.py resolves the whole tree), so nothing is
    stripped."""
    (step,) = [r for r in stages[0].all("RUN") if "tomllib" in r.args]
    command = step.args.split(" > /tmp/requirements.txt")[0]
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    out = subprocess.run(["sh", "-c", command.replace("python ", f"{sys.executable} ", 1)], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [r.replace(" ", "") for r in out] == [d.replace(" ", "") for d in declared]
    assert not any(re.match(r"(torch|txwatch-hooks)\b", r) for r in out)
    # The last install is a plain `pip install .`, and the build stops if torch is in the environment after it.
    (install,) = [r.args for r in stages[0].all("RUN") if "pip install" in r.args and "tomllib" not in r.args]
    assert "--no-deps" not in install and "find_spec('torch') is not None" in install


def test_healthcheck_url_follows_the_daemon_settings():
    sys.path.insert(0, str(DEPLOY))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(DEPLOY))
    assert healthcheck.probe_url("/healthz", {}) == f"http://127.0.0.1:{DEFAULT_PORT}/healthz"
    assert healthcheck.probe_url("/readyz", {"TXWATCH_HOST": "0.0.0.0", "TXWATCH_PORT": "9000"}) == \
        "http://127.0.0.1:9000/readyz"
    assert healthcheck.probe_url("/healthz", {"TXWATCH_HOST": "::1"}) == f"http://[::1]:{DEFAULT_PORT}/healthz"
    assert healthcheck.probe_url("/healthz", {"TXWATCH_HOST": "10.1.2.3", "TXWATCH_PORT": ""}) == \
        f"http://10.1.2.3:{DEFAULT_PORT}/healthz"


def _healthcheck(path: str, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK_PY), path], capture_output=True, text=True, timeout=30,
                          env={"TXWATCH_HOST": "0.0.0.0", "TXWATCH_PORT": str(port), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_the_image_command_serves_from_environment_settings_without_torch(servers, tmp_path, db_url, stages):
    """Run the image's ENTRYPOINT + CMD (`txwatch serve`, no flags) with settings from the environment only, and
    without torch and the hooks (the image leaves them out); then the image's health check must pass against it,
    and fail, saying why, once nothing listens."""
    runtime = stages[-1]
    argv = json.loads(runtime.all("ENTRYPOINT")[-1].args) + json.loads(runtime.all("CMD")[-1].args)
    assert argv[0] == "txwatch"
    port = free_port()
    blocked = "import sys; sys.modules['torch'] = None; sys.modules['txwatch_hooks'] = None; " \
              "from txwatch.cli import main; sys.exit(main(sys.argv[1:]))"
    # As in the image, except loopback: a test opens no port beyond this machine.
    env = {"TXWATCH_HOST": "127.0.0.1", "TXWATCH_PORT": str(port), "TXWATCH_DB_URL": db_url,
           "TXWATCH_TOKEN": "image-test-token-not-a-secret"}
    servers.append(start_server("collector", [sys.executable, "-c", blocked, *argv[1:]], f"http://127.0.0.1:{port}",
                                "/healthz", tmp_path, env))

    for path in ("/healthz", "/readyz"):
        result = _healthcheck(path, port)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"healthy: http://127.0.0.1:{port}{path}: HTTP 200")

    servers[-1].stop()
    result = _healthcheck("/healthz", port)
    assert result.returncode == 1
    assert result.stderr.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz: ")
    assert "Connection refused" in result.stderr


def test_the_image_settings_refuse_to_serve_without_a_token(stages, monkeypatch):
    """The image binds to every interface, so a container started without TXWATCH_TOKEN stops with a clear
    message rather than exposing run data."""
    from txwatch.settings import SettingsError, load_settings

    for key, value in env_pairs(stages[-1]).items():
        if key.startswith("TXWATCH_"):
            monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match="TXWATCH_TOKEN"):
        load_settings()
    monkeypatch.setenv("TXWATCH_TOKEN", "t" * 32)
    assert load_settings().port == DEFAULT_PORT


def _build_context(dest: Path) -> None:
    """Copy what `docker build` would send: the repository filtered by deploy/Dockerfile.dockerignore."""
    patterns = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    reincluded = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        # Skip whole folders that are ignored and hold nothing a '!' pattern brings back (.git, .venv, ...).
        dirs[:] = [d for d in dirs if not (_ignored(rel_root + d, patterns)
                                           and not any(r.startswith(rel_root + d + "/") for r in reincluded))]
        for name in files:
            rel = rel_root + name
            if _ignored(rel, patterns):
                continue
            source, target = Path(root) / name, dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                target.symlink_to(source.readlink())
            else:
                target.write_bytes(source.read_bytes())
        for name in dirs:  # a symlinked folder (txwatch/_builtin_rules -> ../rules) travels as the link
            source = Path(root) / name
            if source.is_symlink():
                (dest / (rel_root + name)).parent.mkdir(parents=True, exist_ok=True)
                (dest / (rel_root + name)).symlink_to(source.readlink())
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]


@pytest.mark.slow
def test_the_package_built_from_the_image_context_is_complete(tmp_path):
    """Build txwatch from exactly the files the image's build context holds, as its build stage does (pip
    install --no-deps .), and check the installed package finds its built-in rules and migrations."""
    context, wheels, site = tmp_path / "context", tmp_path / "wheels", tmp_path / "site"
    _build_context(context)
    assert (context / "txwatch" / "_builtin_rules").is_symlink()
    assert not (context / "tests").exists() and not (context / "hooks").exists()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # The venv's own setuptools when it has one (no download); otherwise pip fetches it, as docker build does.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-w", str(wheels), str(context)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("txwatch-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    probe = (
        "import sys; sys.modules['torch'] = None; sys.modules['txwatch_hooks'] = None; "
        f"sys.path.insert(0, {str(site)!r}); import txwatch; assert txwatch.__file__.startswith({str(site)!r}); "
        "from txwatch.rules import load_rules; from txwatch.store.db import head_revision; "
        "print(len(load_rules()), head_revision())"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120)
    n_rules, head = out.stdout.split()
    assert int(n_rules) == len(list((REPO / "rules").glob("*.yaml")))
    from txwatch.store.db import head_revision

    assert head == head_revision()
