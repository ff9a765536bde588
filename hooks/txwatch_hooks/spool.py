"""A bounded, ordered store of batches the collector has not taken yet: files on disk, else memory.

One folder per (project, run, rank). Files are named ``<seq>-<points>.json`` and written atomically
(temporary file, then rename), so a crash never leaves half a batch and a later process with the same run
replays what an earlier one could not deliver, in seq order.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from pathlib import Path

from txwatch_hooks.wire import SealedBatch

log = logging.getLogger(__name__)

MEMORY_FALLBACK_MAX_BYTES = 32 * 1024 * 1024  # when the disk is unusable, keep this much in memory instead
_FILE = re.compile(r"^(\d{20})-(\d+)-(\d+)\.json$")


class Spool:
    """Oldest-first queue of sealed batches, bounded by bytes; evictions are reported to ``on_evict``."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self._entries: collections.deque[tuple[int, int, int, int]] = collections.deque()  # seq, size, pts, ev
        self._memory: dict[int, bytes] = {}  # used once the disk failed
        self._on_disk = True
        self.bytes = 0
        self.problem: str | None = None  # why the disk is not used, for the log line
        self._scan()

    def _scan(self) -> None:
        """Pick up batches an earlier process with this run and rank left behind."""
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return
        except OSError as exc:
            self._to_memory(f"cannot read {self.folder}: {exc}")
            return
        for name in names:
            m = _FILE.match(name)
            if not m:
                continue
            try:
                size = (self.folder / name).stat().st_size
            except OSError:
                continue
            self._entries.append((int(m.group(1)), size, int(m.group(2)), int(m.group(3))))
            self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)

    def max_seq(self) -> int | None:
        return self._entries[-1][0] if self._entries else None

    def _path(self, seq: int, points: int, events: int) -> Path:
        return self.folder / f"{seq:020d}-{points}-{events}.json"

    def _to_memory(self, problem: str) -> None:
        if self._on_disk:
            self._on_disk = False
            self.problem = problem
            self.max_bytes = min(self.max_bytes, MEMORY_FALLBACK_MAX_BYTES)
            # batches already on disk stay listed only if still readable; new ones go to memory

    def append(self, batch: SealedBatch) -> list[tuple[int, int]]:
        """Keep ``batch``; returns (points, events) of the oldest batches evicted to stay under the bound."""
        evicted = []
        size = len(batch.data)
        while self._entries and self.bytes + size > self.max_bytes:
            evicted.append(self._evict_oldest())
        if size > self.max_bytes:  # a single batch larger than the whole spool: cannot keep it
            evicted.append((batch.points, batch.events))
            return evicted
        if self._on_disk:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                final = self._path(batch.seq, batch.points, batch.events)
                tmp = final.with_suffix(".tmp")
                with open(tmp, "wb") as fh:
                    fh.write(batch.data)
                os.replace(tmp, final)
            except OSError as exc:
                self._to_memory(f"cannot write to {self.folder}: {exc}")
        if not self._on_disk:
            self._memory[batch.seq] = batch.data
        self._entries.append((batch.seq, size, batch.points, batch.events))
        self.bytes += size
        return evicted

    def _evict_oldest(self) -> tuple[int, int]:
        seq, size, points, events = self._entries[0]
        self.remove_head()
        return points, events

    def head(self) -> tuple[int, bytes] | None:
        """The oldest batch (seq, bytes), or None when empty; unreadable files are skipped (and removed)."""
        while self._entries:
            seq, _size, points, events = self._entries[0]
            if seq in self._memory:
                return seq, self._memory[seq]
            try:
                return seq, self._path(seq, points, events).read_bytes()
            except OSError as exc:
                log.warning("txwatch: skipping unreadable spooled batch %s: %s", seq, exc)
                self.remove_head()
        return None

    def head_counts(self) -> tuple[int, int]:
        _seq, _size, points, events = self._entries[0]
        return points, events

    def remove_head(self) -> None:
        seq, size, points, events = self._entries.popleft()
        self.bytes -= size
        if self._memory.pop(seq, None) is None:
            try:
                self._path(seq, points, events).unlink()
            except OSError:
                pass
