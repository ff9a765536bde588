"""The background worker between the training loop and the collector.

``submit()`` is the only call made on the training thread: O(1), never blocks, never raises; a full queue
drops the record and counts it. It does not wake the worker either: the worker wakes on its own schedule
(every ``schedule_delay_s``), or early when the queue is half full or a flush is asked for. Waking it per
record would cost a context switch per step, which on a busy host pre-empts the training job's own
(OpenMP) threads and multiplies small steps' time. One daemon thread (``txwatch.transport``) resolves tensors to numbers (the
only place values leave the device), builds batches, sends them, spools them to disk while the collector
is away, and replays the spool in seq order when it is back. A batch is sealed once (fixed seq and bytes),
so a retry is byte-identical and the collector's (run, rank, seq) idempotency makes a replay harmless.
"""

from __future__ import annotations

import logging
import os
import collections
import threading
import time
import weakref
from typing import Any, Protocol

from txwatch_hooks.guard import Guard
from txwatch_hooks.options import Options
from txwatch_hooks.senders import SendResult
from txwatch_hooks.spool import Spool, orphans
from txwatch_hooks.wire import BatchBuilder, SealedBatch

log = logging.getLogger(__name__)

RETRY_BACKOFF_MIN_S = 1.0  # first retry after a failed send; doubles per failure
RETRY_BACKOFF_MAX_S = 30.0  # a collector back up is noticed within this
FLUSH_RETRY_MIN_S = 0.2  # while flushing (close, exit) retry faster: the caller is waiting anyway
DRAIN_MAX = 10_000  # records taken per wake-up before looking at the clock again


class Record(Protocol):
    """Something queued by the training side; ``emit`` (worker thread) turns it into points/events."""

    count: int  # points it carries, for the drop counts

    def emit(self, builder: BatchBuilder) -> None: ...


class Sender(Protocol):
    available: bool

    def send(self, data: bytes, timeout_s: float) -> SendResult: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for transport in list(_LIVE):
        transport._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Transport:
    """Bounded queue + batching worker + spool for one (project, run, rank)."""

    def __init__(self, builder: BatchBuilder, sender: Sender, spool: Spool, options: Options, guard: Guard):
        self._builder = builder
        self._builder_full = options.max_batch_size
        builder.limit, builder.on_full = options.max_batch_size, self._seal_and_deliver
        self._sender = sender
        self._spool = spool
        self._options = options
        self._guard = guard
        self._queue: collections.deque[Any] = collections.deque()  # bounded by submit(); appends are atomic
        self._max_queue = options.max_queue_size
        self._wake_at = max(1, options.max_queue_size // 2)
        self._wake_event = threading.Event()
        self._drop_lock = threading.Lock()
        self.dropped: dict[str, int] = {"queue_full": 0, "spool_full": 0}
        self._cond = threading.Condition()
        self._flush_req = 0
        self._flush_done = 0
        self._flush_ok = True
        self._flush_deadline = 0.0
        self._stopping = False
        self._closed = False
        self._disabled = False  # in a forked child
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._backoff_s = RETRY_BACKOFF_MIN_S
        self._next_retry = 0.0
        self.sent_batches = 0
        self._orphans: list[Spool] = []  # other ended jobs' spools this process delivers (spool.orphans)
        if spool.max_seq() is not None:  # an earlier process left batches: continue after them
            builder.next_seq = max(builder.next_seq, spool.max_seq() + 1)
        _LIVE.add(self)

    # -- training-thread side -----------------------------------------------------------------------------

    def submit(self, record: Record) -> bool:
        """Queue ``record`` for the worker; False (and counted) when the queue is full or closed."""
        if self._disabled:
            return False
        if self._closed:
            self.count_drop("closed", record.count)
            return False
        if self._thread is None:
            self._start()
        queued = self._queue
        if len(queued) >= self._max_queue:
            self.count_drop("queue_full", record.count)
            return False
        queued.append(record)
        if len(queued) >= self._wake_at:
            self._wake_event.set()
        return True

    def count_drop(self, reason: str, n: int = 1) -> None:
        with self._drop_lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def flush(self, timeout_s: float) -> bool:
        """Send everything queued so far, retrying until ``timeout_s``; True when nothing is left undelivered.

        What cannot be delivered in time stays in the spool (a later flush, or a later process, sends it).
        """
        if self._disabled:
            return False
        if self._thread is None:
            self._start()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flush_req += 1
            req = self._flush_req
            self._flush_deadline = max(self._flush_deadline, deadline)
        self._wake()
        with self._cond:
            done = self._cond.wait_for(lambda: self._flush_done >= req, timeout=max(timeout_s, 0.0) + 0.5)
            return bool(done and self._flush_ok)

    def close(self, timeout_s: float) -> bool:
        """Flush within ``timeout_s``, then stop the worker; later submits are counted as dropped."""
        if self._closed or self._disabled:
            return False
        start = time.monotonic()
        ok = self.flush(timeout_s)
        self._closed = True
        with self._cond:
            self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.1, timeout_s - (time.monotonic() - start)))
        _LIVE.discard(self)
        return ok

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._disabled:
                self._thread = threading.Thread(target=self._run, name="txwatch.transport", daemon=True)
                self._thread.start()

    def _wake(self) -> None:
        self._wake_event.set()

    def _forked(self) -> None:
        # In a forked child (DataLoader workers...) this transport's thread does not exist and its locks may
        # be held; the child is not the monitored process, so its monitor stays silent.
        self._disabled = True
        self._queue = collections.deque()
        self._wake_event = threading.Event()
        self._drop_lock = threading.Lock()
        self._cond = threading.Condition()
        self._thread = None

    def client_stats(self) -> dict[str, Any]:
        with self._drop_lock:
            dropped = dict(self.dropped)
        return {"dropped": dropped, "spooled_batches": len(self._spool)}

    # -- worker thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._adopt()
        except Exception as exc:
            self._guard.fail("adopting orphaned spools", exc, disable=False)
        while True:
            try:
                if self._cycle():
                    break
            except Exception as exc:  # a bug in here must not kill the worker: count, log once, go on
                self._guard.fail("transport worker", exc, disable=False)
                time.sleep(0.05)
        try:
            self._sender.close()
            for spool in [self._spool, *self._orphans]:
                spool.release()
        except Exception as exc:
            self._guard.fail("transport close", exc, disable=False)

    def _adopt(self) -> None:
        """Take up the spools of ended jobs bound for the same collector; delete (and count) the too old."""
        if self._spool.owner is None or not self._sender.available:
            return
        self._orphans, expired = orphans(self._spool.folder.parents[2], self._spool.owner, self._spool.folder)
        for points, events in expired:
            self.count_drop("orphan_expired", points + events)
        if self._orphans:
            log.info("txwatch: delivering %d batches that ended jobs left in %s",
                     sum(len(s) for s in self._orphans), self._spool.folder.parents[2])

    def _cycle(self) -> bool:
        self._wake_event.wait(self._wait_s())
        self._wake_event.clear()
        self._drain()
        now = time.monotonic()
        with self._cond:
            wanted = self._flush_req > self._flush_done
            req, deadline, stopping = self._flush_req, self._flush_deadline, self._stopping
        if wanted:
            self._drain()  # what was submitted before flush() was asked
        builder = self._builder
        # Records wait in the queue up to one schedule delay, so a point is at most ~2 delays old when sent.
        if wanted or (builder.opened is not None and now - builder.opened >= self._options.schedule_delay_s * 0.5):
            self._seal_and_deliver()
        if wanted:
            ok = self._replay(deadline)
            if ok and self._orphans:
                self._replay_orphans(deadline)
            with self._cond:
                self._flush_done = req
                self._flush_ok = ok and not self._queue and builder.empty()
                self._cond.notify_all()
        elif len(self._spool) and now >= self._next_retry:
            self._replay(None)
        elif self._orphans and now >= self._next_retry:
            self._replay_orphans(None)
        return stopping and not wanted

    def _wait_s(self) -> float:
        waits = [self._options.schedule_delay_s]
        if len(self._spool) or self._orphans:
            waits.append(self._next_retry - time.monotonic())
        return max(0.005, min(waits))

    def _drain(self) -> None:
        queued = self._queue
        for _ in range(DRAIN_MAX * 10):
            try:
                item = queued.popleft()
            except IndexError:
                return
            self._take(item)

    def _take(self, item: Any) -> None:
        try:
            item.emit(self._builder)
        except Exception as exc:
            self.count_drop("internal_error", getattr(item, "count", 1))
            self._guard.fail("turning a record into points", exc, disable=False)
        if self._builder.size() >= self._builder_full:
            self._seal_and_deliver()

    def _seal_and_deliver(self) -> None:
        if self._builder.empty():
            return
        batch = self._builder.seal(self.client_stats())
        if len(self._spool):
            self._keep(batch)  # behind the batches already waiting: order is kept
        else:
            self._deliver(batch)

    def _deliver(self, batch: SealedBatch) -> None:
        """Send ``batch``; one the collector finds too large goes in halves (halved again while refused, down to
        a single point or event); what cannot go now waits in the spool."""
        result = self._send(batch.data, self._options.export_timeout_s)
        if result is SendResult.OK:
            return
        if result is SendResult.REJECTED:
            self.count_drop("rejected", batch.points + batch.events)
            return
        if result is SendResult.TOO_LARGE:
            for half in self._halves(batch):
                if len(self._spool):
                    self._keep(half)
                else:
                    self._deliver(half)
            return
        self._retry_later()
        self._keep(batch)

    def _halves(self, batch: SealedBatch) -> tuple[SealedBatch, ...]:
        halves = self._builder.split(batch)
        if halves is None:  # one point or event larger than the collector's limit: it can never be stored
            self.count_drop("too_large", batch.points + batch.events)
            return ()
        return halves

    def _retry_later(self) -> None:
        """Back off before the next attempt, for at least as long as the collector asked (429/503 Retry-After)."""
        asked = getattr(self._sender, "retry_after_s", None) or 0.0
        self._next_retry = time.monotonic() + max(self._backoff_s, asked)

    def _keep(self, batch: SealedBatch) -> None:
        first = not len(self._spool)
        for points, events in self._spool.append(batch):
            self.count_drop("spool_full", points + events)
        if first:
            self._guard.warn_once(
                "spooling", "txwatch: keeping batches in %s until %s takes them", self._spool.folder,
                self._sender.describe(),
            )
        if self._spool.problem:
            self._guard.warn_once("spool-memory", "txwatch: spooling in memory instead: %s", self._spool.problem)

    def _send(self, data: bytes, timeout_s: float) -> SendResult:
        try:
            result = self._sender.send(data, timeout_s)
        except Exception as exc:
            self._guard.fail(f"sending to {self._sender.describe()}", exc, disable=False)
            return SendResult.RETRY
        if result is SendResult.OK:
            self.sent_batches += 1
            self._backoff_s = RETRY_BACKOFF_MIN_S
        return result

    def _replay_orphans(self, deadline: float | None) -> None:
        """Deliver the adopted spools, each in order, after this process's own; an emptied one is let go."""
        while self._orphans:
            if not self._replay(deadline, self._orphans[0]):
                return
            self._orphans.pop(0).release()

    def _replay(self, deadline: float | None, spool: Spool | None = None) -> bool:
        """Send the spool oldest first; stop at the first failure (order is kept). True when it is empty."""
        flush_backoff = FLUSH_RETRY_MIN_S
        spool = self._spool if spool is None else spool
        while len(spool):
            head = spool.head()
            if head is None:
                break
            _seq, data = head
            timeout = self._options.export_timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    return False
            result = self._send(data, timeout)
            if result is SendResult.OK:
                spool.remove_head()
                continue
            if result is SendResult.REJECTED:
                points, events = spool.head_counts()
                self.count_drop("rejected", points + events)
                spool.remove_head()
                continue
            if result is SendResult.TOO_LARGE:  # its halves go to the end of the spool, and come round in turn
                points, events = spool.head_counts()
                spool.remove_head()
                for half in self._halves(SealedBatch(_seq, data, points, events)):
                    self._keep(half)
                continue
            self._retry_later()
            self._backoff_s = min(self._backoff_s * 2, RETRY_BACKOFF_MAX_S)
            if deadline is None or not self._sender.available:
                return False
            pause = min(max(flush_backoff, getattr(self._sender, "retry_after_s", None) or 0.0),
                        deadline - time.monotonic())
            if pause <= 0:
                return False
            time.sleep(pause)
            flush_backoff = min(flush_backoff * 2, RETRY_BACKOFF_MIN_S * 2)
        return not len(spool)
