"""The wire format (docs/design.md, "Wire format"), built as plain dicts so the hooks need no pydantic.

A batch is sealed once: its ``seq`` and JSON bytes never change afterwards, so a retry or a replay from the
spool sends exactly the same batch and the collector can drop it as a duplicate of (run, rank, seq).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
HOOKS_VERSION = "0.1.0"

# Same alphabets as txwatch.wire.batch (kept in step by tests/hooks/test_wire.py).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=\-]{0,199}$")
METRIC_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,99}(/[A-Za-z0-9_.:\-/\[\]]{1,300})?$")
MAX_MESSAGE_CHARS = 10_000  # the collector's limit on an error message
MAX_LAYERS = 10_000  # the collector's limit on run_info["layers"] (the model's parameter order)

# Metric names the hooks send on their own (the rules read them; see the design's metric table).
LOSS = "loss"
VAL_LOSS = "val_loss"
GRAD_NORM_TOTAL = "grad_norm_total"
GRAD_NONFINITE = "grad_nonfinite"
GRAD_NORM = "grad_norm/"
GRAD_NORM_TOTAL_MAX = "grad_norm_total_max"  # every step's total norm since the previous sample: the largest
GRAD_NORM_TOTAL_MEAN = "grad_norm_total_mean"  # ... and their mean
GRAD_NONFINITE_STEPS = "grad_nonfinite_steps"  # ... and how many of those steps had NaN/Inf gradients
GRAD_NORM_MAX = "grad_norm_max/"
GRAD_INTERVAL_STEPS = "grad_interval_steps"  # how many steps those figures cover (the cost governor may thin)  # per parameter, the largest norm since the previous sample
PARAM_NORM = "param_norm/"
UPDATE_RATIO = "update_ratio/"
UPDATE_RATIO_MAX = "update_ratio_max"
LOSS_SCALE = "loss_scale"
SCALER_SKIPPED = "scaler_skipped"
LR = "lr/"
STEP_TIME = "step_time"
DATA_WAIT = "data_wait"
DATA_WAIT_SHARE = "data_wait_share"
GPU_UTIL = "gpu_util/"
GPU_MEM_USED = "gpu_mem_used/"
GPU_MEM_TOTAL = "gpu_mem_total/"
CUDA_MEM_ALLOCATED = "cuda_mem_allocated/"
CUDA_MEM_RESERVED = "cuda_mem_reserved/"
CUDA_MEM_PEAK = "cuda_mem_peak/"
CPU_UTIL = "cpu_util"
RSS = "rss"


def rank_prefix(rank: int) -> str:
    """Prefix of the system series of ranks > 0 (``rank3.gpu_util/cuda0``); rank 0 has none."""
    return f"rank{rank}." if rank > 0 else ""


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid run or project name, else raise ValueError saying how to fix it."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        hint = re.sub(r"[^A-Za-z0-9._:@+=\-]+", "-", str(value)).strip("-")[:200] or "my-run"
        raise ValueError(
            f"{kind} name {value!r} is not allowed: use 1 to 200 characters of letters, digits and ._:@+=- "
            f"starting with a letter or digit (no '/' or spaces), for example {hint!r}"
        )
    return value


TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=/\-]{0,99}$")  # as the collector's schema.TAG_PATTERN
MAX_TAGS = 100


def check_tags(tags: Any) -> list[str]:
    """``watch(tags=...)`` as a sorted list without repeats; raises TypeError/ValueError saying how to fix it."""
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise TypeError(f"tags must be a list of words, e.g. tags=['sweep', 'baseline'], not {tags!r}")
    for tag in tags:
        if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
            raise ValueError(f"tag {tag!r} is not allowed: use 1 to 100 characters of letters, digits and "
                             "._:@+=/- starting with a letter or digit")
    if len(set(tags)) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per run, not {len(set(tags))}")
    return sorted(set(tags))


def is_metric_name(name: str) -> bool:
    return bool(METRIC_PATTERN.match(name))


def error_info(exc: BaseException) -> dict[str, str]:
    """The ``error`` of an end event: qualified exception type and (bounded) message."""
    cls = type(exc)
    module = cls.__module__
    qual = cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    return {"type": qual[:255], "message": str(exc)[:MAX_MESSAGE_CHARS]}


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-able copy of a user's config: dict keys become strings, unknown objects their ``str()``.

    A config holding e.g. ``torch.bfloat16`` is common; recording its name beats refusing the run.
    """
    if _depth > 20:
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    item = getattr(value, "item", None)  # numpy/torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            return jsonable(item(), _depth + 1)
        except Exception:
            pass
    return str(value)


def _encode(batch: dict[str, Any]) -> bytes:
    """The batch as UTF-8 JSON. Text Python could not decode (``surrogateescape``: a file name from
    ``os.listdir`` that is not UTF-8) holds lone surrogates, which no JSON reader takes: they become U+FFFD,
    so a config or an exception text with one still arrives instead of failing the whole batch."""
    # allow_nan: NaN and Infinity literals are part of the format (a NaN loss is a symptom)
    text = json.dumps(batch, allow_nan=True, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # rare: only then pay for a second pass
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class SealedBatch:
    """A batch ready to send: immutable bytes plus what the spool and the drop counts need."""

    seq: int
    data: bytes
    points: int
    events: int

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.data)


@dataclass
class BatchBuilder:
    """Accumulates points and events for one (project, run, rank) and seals them into numbered batches."""

    run: str
    project: str
    rank: int
    run_info: dict[str, Any] | None = None  # sent with the first batch this process seals
    # Each process numbers its batches from a base taken from the clock (unix ms << 20), so a run resumed
    # under the same name by a new process sends new sequence numbers, never ones the collector has already
    # stored (and would acknowledge as replays). 2**20 batches per process; fits the wire's 2**62 until 2109.
    next_seq: int = field(default_factory=lambda: (time.time_ns() // 1_000_000) << 20)
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    points: int = 0
    opened: float | None = None  # monotonic time the first item of the open batch arrived
    limit: int = 0  # points per batch; on reaching it ``on_full`` seals (one record may span batches)
    on_full: Any = None

    def add_point(self, name: str, step: int, t: float, value: float) -> None:
        if self.opened is None:
            self.opened = time.monotonic()
        self.series.setdefault(name, []).append([step, t, value])
        self.points += 1
        if self.limit and self.points >= self.limit and self.on_full is not None:
            self.on_full()

    def add_event(self, event: dict[str, Any]) -> None:
        if self.opened is None:
            self.opened = time.monotonic()
        self.events.append(event)

    def empty(self) -> bool:
        return not self.series and not self.events

    def size(self) -> int:
        return self.points + len(self.events)

    def split(self, batch: SealedBatch) -> tuple[SealedBatch, SealedBatch] | None:
        """``batch`` as two batches of about half its points and events each, under new seqs (the collector refused
        it as too large, so its seq was never stored); None when it holds a single point or event (the floor).
        The first half keeps the run info and the events come after the points, as in one batch."""
        body = json.loads(batch.data)
        items: list[tuple[str, Any]] = [(name, p) for name, pts in body["series"].items() for p in pts]
        items += [("", e) for e in body["events"]]
        if len(items) < 2:
            return None
        halves = []
        for part in (items[: len(items) // 2], items[len(items) // 2:]):
            half = {k: v for k, v in body.items() if k not in ("series", "events")}
            half["seq"], self.next_seq = self.next_seq, self.next_seq + 1
            series: dict[str, list[Any]] = {}
            for name, item in part:
                if name:
                    series.setdefault(name, []).append(item)
            half["series"], half["events"] = series, [e for name, e in part if not name]
            halves.append(SealedBatch(half["seq"], _encode(half), len(part) - len(half["events"]),
                                      len(half["events"])))
            body.pop("run_info", None)
        return halves[0], halves[1]

    def seal(self, client: dict[str, Any]) -> SealedBatch:
        batch: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run": self.run,
            "project": self.project,
            "seq": self.next_seq,
            "rank": self.rank,
            "sent_at": time.time(),
        }
        if self.run_info is not None:
            batch["run_info"] = self.run_info
        batch["series"] = self.series
        batch["events"] = self.events
        batch["client"] = client
        data = _encode(batch)
        sealed = SealedBatch(self.next_seq, data, self.points, len(self.events))
        self.next_seq += 1
        self.run_info = None
        self.series, self.events, self.points, self.opened = {}, [], 0, None
        return sealed

