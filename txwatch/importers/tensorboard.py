"""TensorBoard event files as txwatch runs (``txwatch import tensorboard LOGDIR``).

Each folder under LOGDIR that holds event files (``events.out.tfevents.*``) is one run, as TensorBoard itself
shows them; its scalars are read with TensorBoard's own ``EventAccumulator`` (the ``tensorboard`` extra) and
their tags mapped onto the names txwatch's rules read (``DEFAULT_MAP``: ``train/loss`` -> ``loss``,
``eval/loss`` -> ``val_loss``, ``learning_rate`` -> ``lr/0``...; ``--map TAG=NAME`` for the rest). Other tags
are kept under a cleaned name (``train/acc`` -> ``train_acc``). The runs become wire batches (the format the
hooks send) with deterministic sequence numbers, so importing the same folder again stores nothing twice.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from txwatch.wire.batch import METRIC_PATTERN, NAME_PATTERN, SCHEMA_VERSION

EVENT_FILE = "events.out.tfevents."
BATCH_POINTS = 50_000  # points per stored batch: well under the ingest limits, a few batches per long run

# TensorBoard tags as the common frameworks write them -> the names txwatch's built-in rules read. Matched
# ignoring case; a tag not here keeps a cleaned name of its own.
DEFAULT_MAP: dict[str, str] = {
    **dict.fromkeys(("loss", "train/loss", "train_loss", "training_loss", "loss/train", "train/loss_step",
                     "train_loss_step", "loss/training", "train/total_loss", "epoch_loss"), "loss"),
    **dict.fromkeys(("val_loss", "val/loss", "eval_loss", "eval/loss", "validation_loss", "validation/loss",
                     "valid/loss", "valid_loss", "loss/val", "loss/validation", "loss/eval", "test/loss"),
                    "val_loss"),
    **dict.fromkeys(("lr", "learning_rate", "train/learning_rate", "train/lr", "lr/0", "lr-adam", "lr-adamw",
                     "lr-sgd", "optim/lr", "learning-rate"), "lr/0"),
    **dict.fromkeys(("grad_norm", "train/grad_norm", "grad_norm_total", "gradient_norm", "grad-norm",
                     "train/gradient_norm", "optim/grad_norm"), "grad_norm_total"),
}

_METRIC = re.compile(METRIC_PATTERN)
_NAME = re.compile(NAME_PATTERN)


class ImportProblem(ValueError):
    """A log folder or a --map that cannot be imported; the message says which and why."""


@dataclass
class TbRun:
    """One imported run: its name, its series (txwatch name -> [(step, time, value)]) and where each came from."""

    name: str
    folder: Path
    series: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # txwatch name -> the TensorBoard tag it was read from
    skipped: list[str] = field(default_factory=list)  # tags with no usable name

    @property
    def points(self) -> int:
        return sum(len(v) for v in self.series.values())


def parse_map(items: list[str]) -> dict[str, str]:
    """``--map TAG=NAME`` options as a mapping (TAG as in TensorBoard, NAME a txwatch series name)."""
    out = {}
    for item in items:
        tag, sep, name = item.partition("=")
        if not sep or not tag or not _METRIC.match(name):
            raise ImportProblem(f"--map {item!r}: write TAG=NAME, NAME a series name such as loss, val_loss or lr/0")
        out[tag.lower()] = name
    return out


def run_folders(logdir: Path) -> list[Path]:
    """The folders under ``logdir`` (itself included) that hold event files, in name order."""
    if not logdir.is_dir():
        raise ImportProblem(f"{logdir} is not a folder")
    found = sorted({Path(root) for root, _, files in os.walk(logdir) if any(f.startswith(EVENT_FILE) for f in files)})
    if not found:
        raise ImportProblem(f"no TensorBoard event files (events.out.tfevents.*) under {logdir}")
    return found


def run_name(logdir: Path, folder: Path, prefix: str | None) -> str:
    """The run's name: its folder relative to LOGDIR, '/' as '.' (LOGDIR's own name for events right in it)."""
    rel = folder.relative_to(logdir).as_posix()
    base = logdir.resolve().name if rel == "." else rel.replace("/", ".")
    name = re.sub(r"[^A-Za-z0-9._:@+=\-]+", "-", f"{prefix}.{base}" if prefix else base).strip("-.")[:200]
    if _NAME.match(name or ""):
        return name
    return "run-" + hashlib.sha256(str(folder).encode()).hexdigest()[:8]  # a folder name of symbols only


def series_name(tag: str, mapping: Mapping[str, str]) -> str | None:
    mapped = mapping.get(tag.lower())
    if mapped is not None:
        return mapped
    clean = re.sub(r"[^A-Za-z0-9_.:\-]", "_", tag.replace("/", "_")).strip("_")[:100]
    return clean if clean and _METRIC.match(clean) else None


def read_run(logdir: Path, folder: Path, mapping: Mapping[str, str], prefix: str | None = None) -> TbRun:
    """One folder's scalars, every point of every tag (``size_guidance`` 0: TensorBoard keeps all)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    acc.Reload()
    run = TbRun(run_name(logdir, folder, prefix), folder)
    for tag in sorted(acc.Tags().get("scalars", [])):
        name = series_name(tag, mapping)
        if name is None:
            run.skipped.append(tag)
            continue
        if name in run.series:  # two tags onto one name: the first (in name order) wins, the other is said
            run.skipped.append(tag)
            continue
        by_step: dict[int, tuple[int, float, float]] = {}
        for event in acc.Scalars(tag):
            if event.step >= 0:
                by_step[int(event.step)] = (int(event.step), float(event.wall_time), float(event.value))
        if by_step:
            run.series[name] = [by_step[s] for s in sorted(by_step)]
            run.sources[name] = tag
    return run


def read_logdir(logdir: Path, extra_map: Mapping[str, str] | None = None, prefix: str | None = None) -> list[TbRun]:
    mapping = {**DEFAULT_MAP, **(extra_map or {})}
    return [read_run(logdir, folder, mapping, prefix) for folder in run_folders(logdir)]


def batches(run: TbRun, project: str) -> Iterator[dict[str, Any]]:
    """The run as wire batches: run info (and a start event) first, an end event with the last; seqs 0, 1, ..."""
    points = sorted((step, t, v, name) for name, pts in run.series.items() for step, t, v in pts)
    if not points:
        return
    first_time = min(p[1] for p in points)
    last_time, last_step = max(p[1] for p in points), max(p[0] for p in points)
    chunks = [points[i:i + BATCH_POINTS] for i in range(0, len(points), BATCH_POINTS)]
    for seq, chunk in enumerate(chunks):
        series: dict[str, list[list[float]]] = {}
        for step, t, v, name in chunk:
            series.setdefault(name, []).append([step, t, v])
        batch: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "run": run.name, "project": project, "seq": seq,
                                 "rank": 0, "sent_at": last_time, "series": series, "events": []}
        if seq == 0:
            batch["run_info"] = {"started": first_time, "tags": ["tensorboard"], "job": f"tensorboard:{str(run.folder)[-280:]}",
                                 "imported_from": str(run.folder), "series_from": run.sources}
            batch["events"].append({"kind": "start", "time": first_time})
        if seq == len(chunks) - 1:
            batch["events"].append({"kind": "end", "time": last_time, "step": last_step, "status": "finished"})
        yield batch
