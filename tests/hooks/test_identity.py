"""Run identity: watch(resume=...) never merges a second job into a stored run unless asked, and the ranks of
one job agree on one run."""

from __future__ import annotations

import logging
import time

import pytest
import torch

import txwatch_hooks
from txwatch_hooks import identity
from txwatch_hooks.testing import CollectorStandIn, MemorySender

from .conftest import FAST, TinyNet, batch_of


def _train(sink=None, steps: int = 3, **kwargs) -> str:
    """One short job; returns the run name it was recorded under."""
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    if sink is not None:
        kwargs["sender"] = sink
    with txwatch_hooks.watch(model, opt, project="ident", **FAST, **kwargs) as monitor:
        for step in range(steps):
            x, y = batch_of(seed=step)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            monitor.log(loss=float(step))
    return monitor.run


def test_a_name_already_stored_gets_a_new_run_and_a_warning(caplog):
    sink = MemorySender()
    assert _train(sink, run="exp") == "exp"
    with caplog.at_level(logging.WARNING, logger="txwatch_hooks"):
        assert _train(sink, run="exp") == "exp-2"
    assert "run ident/exp is already stored by another job" in caplog.text
    assert "ident/exp-2" in caplog.text and "resume='allow'" in caplog.text
    assert _train(sink, run="exp") == "exp-3"
    # the first run kept its own points only
    assert {b["run"] for b in sink.batches} == {"exp", "exp-2", "exp-3"}
    first = [p for b in sink.batches if b["run"] == "exp" for p in b["series"].get("loss", [])]
    assert [p[0] for p in first] == [1, 2, 3]


def test_allow_continues_the_stored_run_and_must_requires_it():
    sink = MemorySender()
    with pytest.raises(ValueError, match=r"resume='must': no run ident/later is stored"):
        _train(sink, run="later", resume="must")
    assert _train(sink, run="later", resume="allow") == "later"
    assert _train(sink, run="later", resume="allow") == "later"
    assert _train(sink, run="later", resume="must") == "later"
    assert {b["run"] for b in sink.batches} == {"later"}


def test_bad_resume_values_fail_at_watch(monkeypatch):
    with pytest.raises(ValueError, match="resume must be one of 'never', 'allow', 'must', not 'sometimes'"):
        _train(MemorySender(), run="x", resume="sometimes")
    monkeypatch.setenv("TXWATCH_RESUME", "maybe")
    with pytest.raises(ValueError, match="TXWATCH_RESUME must be one of"):
        _train(MemorySender(), run="x")
    monkeypatch.setenv("TXWATCH_RESUME", "allow")
    sink = MemorySender()
    assert _train(sink, run="x") == _train(sink, run="x") == "x"
    with pytest.raises(ValueError, match="resume='must' continues a stored run: pass its name"):
        _train(MemorySender(), resume="must")


def test_the_ranks_of_one_torchrun_job_share_one_run(monkeypatch):
    """Rank 0 of an elastic job finds the name taken by an older job and moves to exp-2; rank 1, starting
    later, finds exp-2 written by its own job id and joins it. A restart of the job (same id) continues it."""
    sink = MemorySender()
    assert _train(sink, run="exp") == "exp"  # an older, unrelated job
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    assert _train(sink, run="exp") == "exp-2"  # this job's first process
    assert _train(sink, run="exp") == "exp-2"  # another rank (or an elastic restart) of the same job
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-43")
    assert _train(sink, run="exp") == "exp-3"


def test_a_master_address_identifies_a_job_only_while_its_run_is_live(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    job, shared = identity.job_id(world_size=2)
    assert (job, shared) == ("master:10.0.0.1:29500", True)
    assert identity.same_job({"job": job, "status": "running"}, job)
    assert not identity.same_job({"job": job, "status": "finished"}, job)  # an earlier job on the same port
    assert not identity.same_job({"job": "process:abc", "status": "running"}, job)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    assert identity.job_id(world_size=2) == ("slurm:777", True)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert identity.job_id(world_size=2) == ("torchelastic:abc", True)
    single, _ = identity.job_id(world_size=1)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert identity.job_id(world_size=1)[0] != identity.job_id(world_size=1)[0]  # each process its own


def test_a_rank_without_a_shared_id_keeps_the_name_and_says_why(caplog):
    lookups = []
    with caplog.at_level(logging.WARNING, logger="txwatch_hooks"):
        name = identity.resolve_run("p", "exp", "never", "process:x", lambda p, n: lookups.append(n),
                                    shared=False, generated=False, rank=0)
    assert name == "exp" and lookups == []
    assert "shares no job id" in caplog.text


class SlowStore(MemorySender):
    def stored_run(self, project, name):
        time.sleep(5)
        return None


class BrokenStore(MemorySender):
    def stored_run(self, project, name):
        raise OSError("disk on fire")


def test_a_slow_or_failing_store_costs_little_and_proceeds_as_allow(monkeypatch, caplog):
    monkeypatch.setattr(identity, "LOOKUP_TIMEOUT_S", 0.3)
    with caplog.at_level(logging.WARNING, logger="txwatch_hooks"):
        started = time.monotonic()
        assert _train(SlowStore(), run="slow") == "slow"
        assert time.monotonic() - started < 3.0
        assert "could not check within 0.3 s whether run ident/slow is already stored" in caplog.text
        assert _train(BrokenStore(), run="broken") == "broken"
    assert "(OSError: disk on fire); continuing it as with resume='allow'" in caplog.text
    for thread in __import__("threading").enumerate():  # the slow read may end on its own, later
        if thread.name == "txwatch.resume":
            thread.join(6)


def test_over_http_the_collector_is_asked_and_an_away_one_does_not_stop_the_job(caplog):
    with CollectorStandIn() as server:
        assert _train(endpoint=server.url, run="web") == "web"
        assert _train(endpoint=server.url, run="web") == "web-2"
        assert _train(endpoint=server.url, run="web", resume="allow") == "web"
        url = server.url
    with caplog.at_level(logging.WARNING, logger="txwatch_hooks"):
        started = time.monotonic()
        monitor = txwatch_hooks.watch(TinyNet(), run="web", project="ident", endpoint=url, **FAST)
        monitor.close(timeout_s=0.2)
    assert monitor.run == "web" and time.monotonic() - started < 3.0
    assert "could not check whether run ident/web is already stored (the collector at" in caplog.text


@pytest.mark.parametrize("module", ["lightning", "huggingface"])
def test_the_callbacks_take_resume(module):
    import importlib

    callbacks = importlib.import_module(f"txwatch_hooks.integrations.{module}")
    assert callbacks.TxwatchCallback(run="cb", resume="allow").watch_kwargs["resume"] == "allow"
    with pytest.raises(ValueError, match="resume must be one of"):
        callbacks.TxwatchCallback(run="cb", resume="always")


def _ranks(url: str, spool, run: str) -> list[str]:
    """The run name each rank of a real 2-process gloo job (MASTER_ADDR:MASTER_PORT, no torchrun id) chose."""
    from pathlib import Path

    from .conftest import start_ranks

    procs = start_ranks(Path(__file__).with_name("ddp_named_job.py"), url, str(spool), run)
    names = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        names.append(out.strip().splitlines()[-1])
    return names


def test_the_ranks_of_a_real_two_process_job_agree_on_one_new_run(tmp_path):
    with CollectorStandIn() as server:
        assert _train(endpoint=server.url, run="ddp") == "ddp"  # an older job under the same name
        assert _ranks(server.url, tmp_path / "a", "ddp") == ["ddp-2", "ddp-2"]
        assert _ranks(server.url, tmp_path / "b", "ddp") == ["ddp-3", "ddp-3"]  # a later job: its own run
        assert {(b["run"], b["rank"]) for b in server.batches if b["run"] != "ddp"} == {
            ("ddp-2", 0), ("ddp-2", 1), ("ddp-3", 0), ("ddp-3", 1)}
