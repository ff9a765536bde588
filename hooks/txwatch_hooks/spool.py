"""A bounded, ordered store of batches the collector has not taken yet: files on disk, else memory.

One folder per (project, run, rank). Files are named ``<seq>-<points>.json`` and written atomically
(temporary file, then rename), so a crash never leaves half a batch and a later process with the same run
replays what an earlier one could not deliver, in seq order.

A process holds a lock on its folder's ``.owner`` file (which names where its batches go) for as long as it
lives; the kernel lets go of it however the process ends. A folder nobody holds is an orphan: its job ended while
the collector was away. Any later process of the same user sending to the same place adopts it (``orphans``) and
delivers it after its own batches; orphaned batches older than ``ORPHAN_MAX_AGE_S`` are deleted instead, and each
process adopts at most ``ORPHAN_ADOPT_MAX_BYTES`` (the rest waits for the next one). Both are counted as drops.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from pathlib import Path

from txwatch_hooks.wire import SealedBatch

try:
    import fcntl
except ImportError:  # Windows: no ownership kept, so no orphans adopted either
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MEMORY_FALLBACK_MAX_BYTES = 32 * 1024 * 1024  # when the disk is unusable, keep this much in memory instead
# An orphaned batch a week old belongs to a run long since marked vanished; past that it is deleted, not sent.
ORPHAN_MAX_AGE_S = 7 * 24 * 3600.0
ORPHAN_ADOPT_MAX_BYTES = 256 * 1024 * 1024  # one process delivers this much of other jobs' spools, at most
OWNER_FILE = ".owner"
_FILE = re.compile(r"^(\d{20})-(\d+)-(\d+)\.json$")


class Spool:
    """Oldest-first queue of sealed batches, bounded by bytes; evictions are reported to ``on_evict``."""

    def __init__(self, folder: Path, max_bytes: int, owner: str | None = None):
        self.folder = folder
        self.max_bytes = max_bytes
        self.owner = owner  # where the batches go (the sender); None: no ownership kept (a test's own spool)
        self._lock_fd: int | None = None
        if owner is not None:
            self._lock_fd = _hold(folder, owner)
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

    def release(self) -> None:
        """Let go of the folder (a later process may adopt what is left); an emptied folder is removed."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if not self._entries:
                (self.folder / OWNER_FILE).unlink(missing_ok=True)
                for folder in (self.folder, self.folder.parent, self.folder.parent.parent):
                    folder.rmdir()  # only while empty: stops at the first that is not
        except OSError:
            pass
        finally:
            os.close(fd)

    def expire(self, before: float) -> list[tuple[int, int]]:
        """Delete the batches written before ``before`` (unix time); their (points, events)."""
        gone = []
        while self._entries:
            seq, _size, points, events = self._entries[0]
            try:
                if self._path(seq, points, events).stat().st_mtime >= before:
                    break
            except OSError:
                pass
            self.remove_head()
            gone.append((points, events))
        return gone


def _hold(folder: Path, owner: str | None) -> int | None:
    """Lock ``folder``'s owner file without waiting and, when ``owner`` is given, write it there; the open file
    (None when another live process holds it, or the disk refuses)."""
    if fcntl is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if owner is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner.encode("utf-8", "replace"), 0)
        return fd
    except OSError:
        os.close(fd)
        return None


def _rank_folders(root: Path) -> list[Path]:
    """``root/<project>/<run>/rank*``, sorted. Other processes create and remove these folders meanwhile: one
    that vanishes while it is listed is skipped (Python 3.11's ``Path.glob`` raises FileNotFoundError then)."""
    return sorted(rank for project in _subfolders(root) for run in _subfolders(project)
                  for rank in _subfolders(run) if rank.name.startswith("rank"))


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:  # gone (or unreadable) since its parent was listed
        return []


def orphans(root: Path, owner: str, mine: Path) -> tuple[list[Spool], list[tuple[int, int]]]:
    """The spools under ``root`` no live process holds and that were bound for ``owner`` (adopted: held by this
    process until ``release()``), within ``ORPHAN_ADOPT_MAX_BYTES``; and the (points, events) of the orphaned
    batches deleted for being older than ``ORPHAN_MAX_AGE_S`` (whatever their destination)."""
    adopted: list[Spool] = []
    expired: list[tuple[int, int]] = []
    budget = ORPHAN_ADOPT_MAX_BYTES
    before = time.time() - ORPHAN_MAX_AGE_S
    for folder in _rank_folders(root):
        if folder == mine or not folder.is_dir():
            continue
        fd = _hold(folder, None)
        if fd is None:
            continue  # its job is still running (or the folder is unusable)
        spool = Spool(folder, ORPHAN_ADOPT_MAX_BYTES)
        spool._lock_fd = fd
        expired += spool.expire(before)
        try:
            bound_for = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            bound_for = ""
        if len(spool) and bound_for == owner and spool.bytes <= budget:
            budget -= spool.bytes
            adopted.append(spool)
        else:
            spool.release()
    return adopted, expired
