"""The system sampler: process figures everywhere, GPU figures where there is one, heartbeats."""

from __future__ import annotations

import logging

import pytest
import torch

import txwatch_hooks
from txwatch_hooks import system

SAMPLING = {"system_interval_s": 0.05, "heartbeat_s": 0.05, "schedule_delay_s": 0.02, "crash_hooks": False}


def test_cpu_host_sends_process_figures_and_no_gpu_series(tiny, sink, caplog):
    with caplog.at_level(logging.WARNING):
        with txwatch_hooks.watch(tiny, sender=sink, **SAMPLING) as monitor:
            monitor.log(step=7, loss=1.0)
            assert sink.wait_for(lambda: len(sink.series("rss")) >= 2 and sink.events("heartbeat"))
    assert all(v > 10e6 for _, v in sink.series("rss"))  # a Python process with torch: tens of MB at least
    assert all(0 <= v for _, v in sink.series("cpu_util"))
    assert not any(n.startswith(("gpu_", "cuda_")) for n in sink.names())
    assert all(e["step"] == 7 for e in sink.events("heartbeat"))
    assert not caplog.records  # no GPU is not a problem


def test_a_run_shorter_than_the_sampling_interval_still_sends_its_process_figures(tiny, sink):
    # The first periodic sample comes a second in; a run of a few steps is over long before. The sampler
    # takes one more sample as the run ends, so even such a run has CPU and memory figures, at its last step.
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    options = dict(SAMPLING, system_interval_s=30.0, heartbeat_s=30.0)
    with txwatch_hooks.watch(tiny, opt, sender=sink, **options) as monitor:
        for _ in range(3):
            tiny(torch.randn(4, 6)).sum().backward()
            opt.step()
            opt.zero_grad()
    assert monitor.step == 3
    for name in ("cpu_util", "rss"):
        assert sink.series(name), f"no {name} from a short run"
        assert sink.series(name)[-1][0] == 3, f"{name}: the last sample is at the run's last step"
    assert sink.series("rss")[-1][1] > 10e6


class FakeNvml:
    def __init__(self):
        pass

    def sample(self, index):
        return 87.0, 6e9, 80e9

    def close(self):
        pass


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(system, "cuda_devices", lambda local_rank, world_size: [0])
    monkeypatch.setattr(system, "_Nvml", FakeNvml)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 5e9)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 5.5e9)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: 5.8e9)


def test_gpu_figures_are_named_per_device(tiny, sink, fake_gpu):
    with txwatch_hooks.watch(tiny, sender=sink, **SAMPLING):
        assert sink.wait_for(lambda: sink.series("gpu_util/cuda0"))
    assert sink.series("gpu_util/cuda0")[0][1] == 87.0
    assert sink.series("gpu_mem_used/cuda0")[0][1] == 6e9
    assert sink.series("gpu_mem_total/cuda0")[0][1] == 80e9
    assert sink.series("cuda_mem_allocated/cuda0")[0][1] == 5e9
    assert sink.series("cuda_mem_reserved/cuda0")[0][1] == 5.5e9
    assert sink.series("cuda_mem_peak/cuda0")[0][1] == 5.8e9


def test_nvml_missing_is_not_an_error(tiny, sink, fake_gpu, monkeypatch, caplog):
    def no_driver():
        raise OSError("NVML Shared Library Not Found")

    monkeypatch.setattr(system, "_Nvml", no_driver)
    with caplog.at_level(logging.WARNING):
        with txwatch_hooks.watch(tiny, sender=sink, **SAMPLING):
            assert sink.wait_for(lambda: sink.series("cuda_mem_allocated/cuda0"))
    assert not any(n.startswith("gpu_") for n in sink.names())
    assert not caplog.records


def test_other_ranks_send_prefixed_device_figures_and_no_model_metrics(tiny, sink, fake_gpu, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with txwatch_hooks.watch(tiny, opt, sender=sink, run="ddp-job", grad_every=1, update_every=1,
                             **SAMPLING) as monitor:
        assert monitor.rank == 1 and monitor.world_size == 2
        loss = tiny(torch.randn(2, 6)).sum()
        loss.backward()
        opt.step()
        monitor.log(loss=loss)
        assert sink.wait_for(lambda: sink.series("rank1.gpu_util/cuda0") and sink.series("rank1.rss"))
    assert {b["rank"] for b in sink.batches} == {1}
    assert "layers" not in sink.batches[0]["run_info"]  # rank 0 sends the per-layer series and their order
    names = sink.names()
    assert all(n.startswith("rank1.") for n in names), names
    assert {"rank1.cpu_util", "rank1.cuda_mem_allocated/cuda0"} <= names
    assert [e["kind"] for e in sink.events() if e["kind"] != "heartbeat"] == ["start", "end"]
