"""The public surface is small and pinned, and the hooks import nothing of the collector."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import txwatch_hooks

COLLECTOR_DEPENDENCIES = {"sqlalchemy", "fastapi", "starlette", "uvicorn", "slack_sdk", "apscheduler", "pydantic",
                          "alembic", "psycopg", "prometheus_client", "typer", "lark", "httpx", "requests"}


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return {m.split(".")[0] for m in json.loads(out.splitlines()[-1])}


def test_public_surface():
    assert txwatch_hooks.__all__ == ["Monitor", "__version__", "preflight", "watch"]
    assert txwatch_hooks.__version__ == "0.1.0"
    monitor_api = {n for n in dir(txwatch_hooks.Monitor) if not n.startswith("_")}
    assert monitor_api == {"log", "flush", "close", "step", "dropped", "closed"}


def test_full_package_reexports_the_hooks():
    import txwatch
    import txwatch.integrations.huggingface
    import txwatch.integrations.lightning
    import txwatch_hooks.integrations.huggingface
    import txwatch_hooks.integrations.lightning

    assert txwatch.__all__ == ["Api", "ApiError", "Monitor", "preflight", "watch"]
    assert txwatch.Api is __import__("txwatch.client").client.Api
    assert txwatch.watch is txwatch_hooks.watch and txwatch.Monitor is txwatch_hooks.Monitor
    assert txwatch.preflight is txwatch_hooks.preflight
    assert txwatch.integrations.lightning.TxwatchCallback is txwatch_hooks.integrations.lightning.TxwatchCallback
    assert (txwatch.integrations.huggingface.TxwatchCallback
            is txwatch_hooks.integrations.huggingface.TxwatchCallback)
    with pytest.raises(AttributeError):
        txwatch.no_such_thing  # noqa: B018


@pytest.mark.slow
def test_importing_the_hooks_loads_no_collector_dependency():
    loaded = _modules_after("import txwatch_hooks, txwatch_hooks.testing")
    assert "torch" in loaded
    assert not loaded & COLLECTOR_DEPENDENCIES, loaded & COLLECTOR_DEPENDENCIES
    assert "lightning" not in loaded and "transformers" not in loaded  # integrations import them, not this


@pytest.mark.slow
def test_importing_txwatch_does_not_import_torch():
    """The CLI and the collector import ``txwatch``; only ``txwatch.watch`` pulls in torch."""
    assert "torch" not in _modules_after("import txwatch")
