"""The knobs of ``watch(**sampling)``: explicit argument, then TXWATCH_* environment variable, then default.

Misuse raises at once (at ``watch()``), naming the knob and what it accepts; nothing here runs on the hot path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Defaults, each with its reason. The sampling ones are what benchmarks/overhead.py measures.
GRAD_EVERY = 10  # per-layer grad norms every 10th step: cheap, and dense enough to see a spike within seconds
UPDATE_EVERY = 50  # the update ratio needs a parameter copy around step(): the dearest capture, so sparser
DENSE_FIRST_STEPS = 20  # update ratios on every one of the first steps: when a bad learning rate shows first
DENSE_AFTER_LR_CHANGE = 5  # ... and on the steps after any group's LR moved by more than 2x in one step
EVERY_STEP_COST = 0.005  # the every-step gradient norms may take 0.5% of a step, else they are thinned out
UPDATE_MEMORY_SHARE = 0.01  # the update ratio's copy: at most 1% of the parameters' bytes ...
UPDATE_MEMORY_FLOOR = 1 << 20  # ... or 1 MiB for a small model (every tensor copied whole, exact) ...
UPDATE_MEMORY_CAP = 64 << 20  # ... and never more than 64 MiB (larger tensors are sampled, see grads.Snapshot)
SYSTEM_INTERVAL_S = 10.0  # GPU/CPU figures move slowly; NVML calls take ~1 ms each
HEARTBEAT_S = 30.0  # well under the collector's stall_after_s (300 s) even if a few are late
MAX_QUEUE_SIZE = 10_000  # records (about one per step and kind): ~minutes of steps if the worker stalls
SCHEDULE_DELAY_S = 2.0  # a batch leaves at most this long after its first point: live enough, few requests
MAX_BATCH_SIZE = 20_000  # points per batch: ~1 MB of JSON, the collector's series-per-batch limit
EXPORT_TIMEOUT_S = 10.0  # one HTTP request; the worker, never the training loop, waits on it
CLOSE_TIMEOUT_S = 10.0  # close() delivers what it can within this, then leaves the rest in the spool
EXIT_TIMEOUT_S = 5.0  # at interpreter exit (atexit, uncaught exception) a job must not hang longer
SPOOL_MAX_BYTES = 256 * 1024 * 1024  # hours of a large model's sampled steps, never a full disk


@dataclass(frozen=True)
class Options:
    """Sampling and transport settings of one monitor (the ``**sampling`` keywords of ``watch()``).

    grad_every: per-parameter gradient norms, their total and the non-finite count every N optimizer steps
        (and at step 1); 0 turns them off.
    update_every: per-parameter update ratios and parameter norms every N steps, on every one of the first
        20 steps and on the 5 steps after any param group's LR changes by more than 2x; 0: off.
    every_step_cost: the share of a step's time the every-step gradient norms (spikes between samples) may
        take on the training thread (default 0.005); where they would take more (a CPU reading every
        gradient), they run on every Nth step only. 1 keeps them on every step whatever they cost.
    update_memory_cap: bytes the update ratio may copy at most (default 64 MiB; the copy is also held to
        1% of the parameters' bytes, or 1 MiB if that is more). Tensors that do not fit are sampled.
    layers: send the per-parameter series (``grad_norm/<param>`` ...); False sends only the totals.
    system_interval_s: seconds between system samples (GPU, CPU, memory); 0 turns the sampler off.
    heartbeat_s: seconds between heartbeats.
    max_queue_size, schedule_delay_s, max_batch_size, export_timeout_s: the transport's batching knobs.
    close_timeout_s: how long ``close()`` tries to deliver; exit_timeout_s: the same at interpreter exit.
    spool_dir: where undeliverable batches wait (default ``$XDG_CACHE_HOME/txwatch/spool``, env
        TXWATCH_SPOOL_DIR); spool_max_bytes bounds it (oldest batches dropped first, counted).
    crash_hooks: report uncaught exceptions and interpreter exit (sys.excepthook, atexit).
    sender: an object with ``send(batch: dict, timeout_s) -> bool`` used instead of HTTP or the embedded
        collector (e.g. ``txwatch_hooks.testing.MemorySender``).
    preflight: run ``txwatch.preflight`` on the first training batch, before it trains (True, or a dict
        of ``preflight()``'s keyword arguments: ``loss_fn``, ``steps``, ``scheduler``, ``max_steps``...).
    """

    grad_every: int = GRAD_EVERY
    update_every: int = UPDATE_EVERY
    update_memory_cap: int = UPDATE_MEMORY_CAP
    every_step_cost: float = EVERY_STEP_COST
    layers: bool = True
    system_interval_s: float = SYSTEM_INTERVAL_S
    heartbeat_s: float = HEARTBEAT_S
    max_queue_size: int = MAX_QUEUE_SIZE
    schedule_delay_s: float = SCHEDULE_DELAY_S
    max_batch_size: int = MAX_BATCH_SIZE
    export_timeout_s: float = EXPORT_TIMEOUT_S
    close_timeout_s: float = CLOSE_TIMEOUT_S
    exit_timeout_s: float = EXIT_TIMEOUT_S
    spool_dir: Path | None = None
    spool_max_bytes: int = SPOOL_MAX_BYTES
    crash_hooks: bool = True
    sender: Any = None
    preflight: Any = False

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Options:
        """Validate ``watch()``'s extra keywords; raises TypeError/ValueError naming the bad one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"watch() got an unexpected keyword argument {unknown[0]!r}; "
                f"the sampling and transport options are: {', '.join(sorted(known))}"
            )
        values = dict(kwargs)
        if values.get("spool_dir") is None and os.environ.get("TXWATCH_SPOOL_DIR"):
            values["spool_dir"] = os.environ["TXWATCH_SPOOL_DIR"]
        for name in ("grad_every", "update_every", "max_queue_size", "max_batch_size", "spool_max_bytes",
                     "update_memory_cap"):
            if name in values:
                values[name] = _int(name, values[name], minimum=0 if name.endswith("_every") else 1)
        for name in ("system_interval_s", "heartbeat_s", "schedule_delay_s", "export_timeout_s",
                     "close_timeout_s", "exit_timeout_s"):
            if name in values:
                values[name] = _seconds(name, values[name], zero_ok=name == "system_interval_s")
        if "every_step_cost" in values:
            cost = values["every_step_cost"]
            if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 < cost <= 1:
                raise ValueError(f"every_step_cost must be a share of the step in (0, 1], not {cost!r}")
            values["every_step_cost"] = float(cost)
        for name in ("layers", "crash_hooks"):
            if name in values and not isinstance(values[name], bool):
                raise TypeError(f"{name} must be True or False, not {values[name]!r}")
        if values.get("spool_dir") is not None:
            values["spool_dir"] = Path(values["spool_dir"]).expanduser()
        sender = values.get("sender")
        if sender is not None and not callable(getattr(sender, "send", None)):
            raise TypeError("sender must have a send(batch: dict, timeout_s: float) -> bool method")
        preflight = values.get("preflight")
        if preflight is not None and not isinstance(preflight, (bool, dict)):
            raise TypeError(f"preflight must be True, False or a dict of preflight() arguments, not {preflight!r}")
        if isinstance(preflight, dict):
            from txwatch_hooks.sanity.armed import check_arguments

            check_arguments(preflight)
        return cls(**values)

    def update_memory_bytes(self, param_bytes: int) -> int:
        """What the update ratio's parameter copy may take for a model of ``param_bytes``."""
        return min(self.update_memory_cap, max(int(param_bytes * UPDATE_MEMORY_SHARE), UPDATE_MEMORY_FLOOR))

    def spool_root(self) -> Path:
        if self.spool_dir is not None:
            return self.spool_dir
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(cache) / "txwatch" / "spool"


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _seconds(name: str, value: Any, zero_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not zero_ok) or value != value:
        raise ValueError(f"{name} must be a positive number of seconds, not {value}")
    return float(value)


def resolve_endpoint(endpoint: str | None) -> str | None:
    """The ingest URL from ``endpoint`` or TXWATCH_ENDPOINT; a bare ``http://host:port`` gets the route."""
    from urllib.parse import urlsplit

    raw = endpoint if endpoint is not None else os.environ.get("TXWATCH_ENDPOINT")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        source = "endpoint" if endpoint is not None else "TXWATCH_ENDPOINT"
        raise ValueError(
            f"{source} {raw!r} is not an http(s) URL; use the collector's address, e.g. http://127.0.0.1:8642"
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/api/v1/ingest"):
        path = path + "/api/v1/ingest"
    return parts._replace(path=path, query="", fragment="").geturl()


def resolve_token(token: str | None) -> str | None:
    value = token if token is not None else os.environ.get("TXWATCH_TOKEN")
    if value is None:
        return None
    value = str(getattr(value, "get_secret_value", lambda: value)()).strip()  # accepts pydantic SecretStr
    return value or None
