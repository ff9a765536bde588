"""Device and process figures, sampled by one background thread (``txwatch.system``), plus heartbeats.

GPU: NVML (nvidia-ml-py) utilization and memory, and torch.cuda's allocator figures, for the devices this
process uses. Every host: process CPU percent and resident memory (psutil). A host without a GPU, or
without NVML, is normal: those series are simply not sent. The sampler never initializes CUDA itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import torch

from txwatch_hooks import wire
from txwatch_hooks.guard import Guard
from txwatch_hooks.records import Event, Points

log = logging.getLogger(__name__)


def cuda_devices(local_rank: int, world_size: int) -> list[int]:
    """The CUDA devices this process uses: its own under torchrun, all visible ones otherwise."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    if world_size > 1:
        return [torch.cuda.current_device()]
    return list(range(torch.cuda.device_count()))


def memory_figures(local_rank: int = 0, world_size: int = 1) -> dict[str, dict[str, float]]:
    """Memory at this moment (an end event's ``memory``): each CUDA device's allocator figures, and the host."""
    out: dict[str, dict[str, float]] = {}
    try:
        for i in cuda_devices(local_rank, world_size):
            total = float(torch.cuda.get_device_properties(i).total_memory)
            out[f"cuda:{i}"] = {
                "allocated": float(torch.cuda.memory_allocated(i)),
                "reserved": float(torch.cuda.memory_reserved(i)),
                "peak": float(torch.cuda.max_memory_allocated(i)),
                "total": total,
            }
    except Exception:
        pass
    try:
        import psutil

        vm = psutil.virtual_memory()
        out["cpu"] = {"rss": float(psutil.Process().memory_info().rss), "available": float(vm.available),
                      "total": float(vm.total)}
    except Exception:
        pass
    return out


class _Nvml:
    """NVML handles for torch's device indices (matched by UUID, so CUDA_VISIBLE_DEVICES is respected)."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self._handles: dict[int, Any] = {}

    def handle(self, index: int) -> Any:
        if index not in self._handles:
            nvml = self.nvml
            handle = None
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None:
                text = str(uuid)
                text = text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID(text)
                except Exception:
                    handle = None
            if handle is None:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._handles[index] = handle
        return self._handles[index]

    def sample(self, index: int) -> tuple[float, float, float]:
        handle = self.handle(index)
        util = self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
        return float(util), float(mem.used), float(mem.total)

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


class SystemSampler:
    """Every ``interval_s`` and once more on stopping: system figures; every ``heartbeat_s``: a heartbeat."""

    def __init__(self, submit: Callable[[Any], bool], step: Callable[[], int], guard: Guard, *,
                 interval_s: float, heartbeat_s: float, rank: int, local_rank: int, world_size: int):
        self._submit = submit
        self._step = step
        self._guard = guard
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self._prefix = wire.rank_prefix(rank)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: _Nvml | None = None
        self._nvml_tried = False
        self._process: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="txwatch.system", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            import psutil

            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first reading only starts the clock
        except Exception as exc:
            self._guard.fail("process figures (psutil)", exc)
        # first sample soon (a short run gets one), once psutil's CPU clock has run for a moment
        next_sample = time.monotonic() + (min(self.interval_s, 1.0) if self.interval_s else float("inf"))
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + self.interval_s
                self._sample()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                try:
                    self._submit(Event({"kind": "heartbeat", "time": time.time(), "step": self._step()}))
                except Exception as exc:
                    self._guard.fail("heartbeat", exc, disable=False)
            self._stop.wait(max(0.05, min(next_sample, next_beat) - time.monotonic()))
        if self.interval_s:
            # A last sample as the run ends: a run shorter than the first delay (a quick test, a short
            # fine-tune) would otherwise send no CPU, memory or GPU figures at all.
            self._sample()
        if self._nvml is not None:
            self._nvml.close()

    def _sample(self) -> None:
        try:
            self.sample_once()
        except Exception as exc:
            self._guard.fail("system sampler", exc, disable=False)

    def sample_once(self) -> None:
        """Take one sample now and queue it (also as the sampler stops, so short runs get one)."""
        values: dict[str, float] = {}
        p = self._prefix
        if self._process is not None:
            try:
                values[p + wire.CPU_UTIL] = float(self._process.cpu_percent(None))
                values[p + wire.RSS] = float(self._process.memory_info().rss)
            except Exception as exc:
                self._guard.fail("process figures (psutil)", exc, disable=False)
        for index in cuda_devices(self.local_rank, self.world_size):
            dev = f"cuda{index}"
            try:
                values[f"{p}{wire.CUDA_MEM_ALLOCATED}{dev}"] = float(torch.cuda.memory_allocated(index))
                values[f"{p}{wire.CUDA_MEM_RESERVED}{dev}"] = float(torch.cuda.memory_reserved(index))
                values[f"{p}{wire.CUDA_MEM_PEAK}{dev}"] = float(torch.cuda.max_memory_allocated(index))
            except Exception as exc:
                self._guard.fail("torch.cuda memory figures", exc, disable=False)
            nvml = self._nvml_handle()
            if nvml is not None:
                try:
                    util, used, total = nvml.sample(index)
                    values[f"{p}{wire.GPU_UTIL}{dev}"] = util
                    values[f"{p}{wire.GPU_MEM_USED}{dev}"] = used
                    values[f"{p}{wire.GPU_MEM_TOTAL}{dev}"] = total
                except Exception as exc:
                    self._guard.fail("NVML figures", exc, disable=False)
        if values:
            self._submit(Points(self._step(), time.time(), values))

    def _nvml_handle(self) -> _Nvml | None:
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                self._nvml = _Nvml()
            except Exception as exc:  # no driver, no library: not an error, just no NVML series
                log.debug("NVML unavailable, GPU utilization not sampled: %s", exc)
        return self._nvml
