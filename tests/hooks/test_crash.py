"""How a run ended, reported by real subprocesses before they exit (sys.excepthook, atexit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from txwatch_hooks.testing import CollectorStandIn

JOB = Path(__file__).with_name("crash_job.py")
CASES = {  # mode -> (status, error type)
    "finish": ("finished", None),
    "exit1": ("finished", None),  # sys.exit is an exit, not a crash
    "crash": ("crashed", "RuntimeError"),
    "oom": ("oom", "torch.OutOfMemoryError"),
    "cpu_oom": ("oom", "RuntimeError"),  # DefaultCPUAllocator: can't allocate memory
}


@pytest.fixture(scope="module")
def finished_jobs(tmp_path_factory):
    """Each mode's job run once, all at the same time (importing torch dominates), each with its collector."""
    runs = {}
    for mode in CASES:
        server = CollectorStandIn().start()
        spool = tmp_path_factory.mktemp(mode)
        proc = subprocess.Popen([sys.executable, str(JOB), mode, server.url, str(spool)], cwd=str(spool),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs[mode] = (server, proc)
    results = {}
    for mode, (server, proc) in runs.items():
        _out, err = proc.communicate(timeout=180)
        server.stop()
        results[mode] = (server, proc.returncode, err)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(CASES))
def test_end_is_reported_before_the_process_exits(finished_jobs, mode):
    status, error_type = CASES[mode]
    server, returncode, stderr = finished_jobs[mode]
    assert (returncode == 0) == (mode == "finish"), stderr
    if error_type:
        assert "Traceback" in stderr  # the user's traceback is still printed
    (end,) = server.events("end")
    assert end["status"] == status
    assert end["step"] == 3
    assert [s for s, _ in server.series("loss")] == [1, 2, 3]
    assert end["memory"]["cpu"]["rss"] > 0
    if error_type:
        assert end["error"]["type"] == error_type
        if mode == "cpu_oom":
            assert "DefaultCPUAllocator: can't allocate memory" in end["error"]["message"]
    else:
        assert "error" not in end


@pytest.mark.slow
def test_a_monitor_nobody_keeps_still_ends_its_run(tmp_path):
    """``txwatch.watch(model, opt)`` with the result thrown away: exit still reports the end."""
    script = tmp_path / "forgetful.py"
    script.write_text(
        "import sys, gc, torch, txwatch_hooks\n"
        "m = torch.nn.Linear(2, 1)\n"
        "txwatch_hooks.watch(m, run='forgotten', endpoint=sys.argv[1], spool_dir=sys.argv[2], system_interval_s=0)\n"
        "gc.collect()\n"
    )
    with CollectorStandIn() as server:
        proc = subprocess.run([sys.executable, str(script), server.url, str(tmp_path)], capture_output=True,
                              text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert [e["status"] for e in server.events("end")] == ["finished"]
