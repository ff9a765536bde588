"""Ranks, the shared run name, and a real two-process DDP job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from txwatch_hooks.distributed import RankInfo, rank_info, shared_run_name
from tests.hooks.conftest import start_ranks, wait_ranks


def test_rank_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_info() == RankInfo(rank=3, world_size=8, local_rank=1)


def test_not_distributed_by_default(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert rank_info() == RankInfo(0, 1, 0)


def test_every_rank_derives_the_same_name_from_the_torchrun_id(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "4f0c2a7e-job")
    names = {shared_run_name(RankInfo(rank, 4, rank % 2)) for rank in range(4)}
    assert len(names) == 1
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "another-launch")
    assert shared_run_name(RankInfo(0, 4, 0)) not in names


def test_without_a_shared_id_ask_for_a_run_name(monkeypatch, tiny):
    import txwatch_hooks

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"Pass run='...' to watch\(\)"):
        txwatch_hooks.watch(tiny, system_interval_s=0, crash_hooks=False)
    monitor = txwatch_hooks.watch(tiny, run="named-job", system_interval_s=0, crash_hooks=False,
                                  sender=__import__("txwatch_hooks.testing").testing.MemorySender())
    assert monitor.run == "named-job"
    monitor.close(1)


@pytest.mark.slow
def test_ddp_job_reports_one_run_with_all_reduced_gradients(stand_in, tmp_path):
    out = tmp_path / "rank0.json"
    wait_ranks(start_ranks(Path(__file__).with_name("ddp_job.py"), stand_in.url, str(tmp_path), str(out)))
    report = json.loads(out.read_text())
    assert {b["run"] for b in stand_in.batches} == {report["run"]}  # rank 0's generated name, broadcast
    assert {b["rank"] for b in stand_in.batches} == {0, 1}
    rank1 = {n for b in stand_in.batches if b["rank"] == 1 for n in b["series"]}
    assert rank1 and all(n.startswith("rank1.") for n in rank1)
    assert "rank1.rss" in rank1
    assert [e["status"] for e in stand_in.events("end")] == ["finished", "finished"]
    for name in report["expected"]["1"]:
        got = dict(stand_in.series(f"grad_norm/{name}", rank=0))
        for step, want in report["expected"].items():
            assert got[int(step)] == pytest.approx(want[name], rel=1e-5), (name, step)
    # and those are not rank 0's local gradients: a capture before DDP's all-reduce would be caught
    name = "module.0.weight"
    assert any(abs(report["local"][s][name] - report["expected"][s][name]) > 1e-3 * report["expected"][s][name]
               for s in report["expected"])
