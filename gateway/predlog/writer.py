"""The prediction log's writer: a bounded queue on the event loop, a thread that writes batches.

The request path appends an entry to a deque (no serialization, no I/O); a writer thread
wakes every ``flush_interval_s``, encodes what is queued and writes it, one ``write`` per file
per batch. When the queue is full or the sink fails, the policy decides:

- ``drop`` (default): the record is dropped and counted by reason (``queue_full``,
  ``disk_full``, ``read_only``, ``io_error``, ``encode_error``; ``sampled`` for the records a
  model's ``[logging] sample`` leaves out; ``shutdown`` for what a drain could not write). An
  error is logged at most once per ``error_interval_s`` per reason; writing resumes by itself
  once the sink recovers.
- ``block``: a request reserves its record's place in the queue before it runs, waiting while
  the queue is full (at most ``reserve_timeout_s``, then 503); the writer retries a failed
  write until it succeeds (or the drain's time is up). Nothing is dropped for lack of room;
  the sink's speed becomes the server's.

The queue is bounded twice: by records (``queue_size``) and by the bytes of their arrays
(``queue_bytes``), which the queue keeps alive until they are written.

Accounting is exact: for each model, records written + records dropped = records offered. A
write cut short by a full disk counts the lines that reached the file as written (and never
writes them again); only the rest is dropped or retried.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gateway.errors import Unavailable
from gateway.predlog.files import LogFile
from gateway.predlog.records import PredictionRecord, RecordEncoder

log = logging.getLogger(__name__)

_BATCH = 1024  # records per write, at most
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
#: What a queued record costs beyond its arrays (the entry, its strings): counted so that
#: records without arrays (failed requests) still count against the byte budget.
_ENTRY_OVERHEAD = 512

#: Called by the writer thread with each entry it takes (the online drift monitor).
Observer = Callable[[PredictionRecord], None]


def entry_bytes(entry: PredictionRecord) -> int:
    """The memory a queued record keeps alive: its input and output arrays, and an overhead."""
    size = _ENTRY_OVERHEAD
    inputs, outputs = entry.inputs, entry.outputs
    if inputs is not None:
        for array in inputs.values():
            size += _array_bytes(array)
    if outputs is not None:
        for _, array in outputs:
            size += _array_bytes(array)
    return size


def _array_bytes(array: np.ndarray) -> int:
    if array.dtype.kind != "O":
        return int(array.nbytes)
    # BYTES tensors hold pointers to Python objects: their lengths are the memory.
    return int(array.nbytes) + sum(len(e) for e in array.flat if isinstance(e, bytes | str))


def failure_reason(exc: OSError) -> str:
    """The drop reason for a sink failure."""
    if exc.errno in _FULL:
        return "disk_full"
    if exc.errno in _READ_ONLY:
        return "read_only"
    return "io_error"


class PredictionLog:
    """Owns the queue, the writer thread, the files and the counters of the prediction log."""

    def __init__(
        self,
        directory: Path,
        *,
        hash_key: bytes,
        queue_size: int = 65536,
        queue_bytes: int = 256 * 1024 * 1024,
        reserve_timeout_s: float = 10.0,
        policy: str = "drop",
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_s: float = 3600.0,
        compress: bool = False,
        flush_interval_s: float = 0.01,
        error_interval_s: float = 60.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.directory = directory
        self.blocking = policy == "block"
        self._capacity = queue_size
        self._byte_capacity = queue_bytes
        self._reserve_timeout_s = reserve_timeout_s
        self._rotate = (rotate_bytes, rotate_s, compress)
        self._flush_interval_s = flush_interval_s
        self._error_interval_s = error_interval_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._observers = list(observers)
        self._encoder = RecordEncoder(hash_key)
        self._queue: deque[tuple[PredictionRecord, int]] = deque()  # (entry, entry_bytes(entry))
        # Bytes queued = in - out; each counter has one writer thread (in: the loop, out: the
        # writer), so neither needs a lock. "out" counts a batch once it is written, not taken:
        # its arrays stay in memory until then.
        self._bytes_in = 0
        self._bytes_out = 0
        self._reserved = 0
        self._written: dict[str, int] = {}
        self._dropped: dict[tuple[str, str], int] = {}
        # Both threads count (drops on the loop, writes and sink failures in the writer): a
        # read-modify-write of a shared dict needs the lock to stay exact.
        self._counts_lock = threading.Lock()
        self._files: dict[tuple[str, str], LogFile] = {}
        self._reported: dict[str, float] = {}
        self._unreported: dict[str, int] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._abort = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Event | None = None
        self._waiting = 0
        self._reserve_timeouts = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (call on the event loop that will offer records)."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)
        self._thread.start()

    def add_observer(self, observer: Observer) -> None:
        """Have ``observer`` see every entry the writer takes (before it is written)."""
        self._observers.append(observer)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued (at most ``timeout_s``), sync and close the files."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is None:
            return
        await asyncio.to_thread(thread.join, timeout_s)
        if thread.is_alive():  # a stalled or failing sink: give up on what is left
            self._abort = True
            await asyncio.to_thread(thread.join, 5.0)
        left = len(self._queue)
        while self._queue:
            entry, size = self._queue.popleft()
            self._bytes_out += size
            self._drop(entry, "shutdown")
        if left:
            log.error("prediction log: %d records could not be written before shutdown", left)

    # -- the request path --------------------------------------------------------------------

    def offer(self, entry: PredictionRecord, *, reserved: bool = False) -> None:
        """Queue one record (sampling and the drop policy applied); never blocks, never raises.

        ``reserved``: the record fills a place taken with :meth:`reserve` (``block`` policy).
        Records offered without one (shadow copies, bounded by their own limit) are queued
        beyond the capacity under ``block``, and dropped past it under ``drop``. The capacity
        is ``queue_size`` records and ``queue_bytes`` bytes; one record larger than the whole
        byte budget is still taken when nothing else is queued (else it could never be logged).
        """
        if reserved and self._reserved > 0:
            self._reserved -= 1
        sample = entry.meta.logging.sample
        if sample < 1.0 and self._rng.random() >= sample:
            self._drop(entry, "sampled")
            if reserved and self._waiting and self._room is not None:
                self._room.set()  # its place is free again, and nothing else would say so
            return
        size = entry_bytes(entry)
        if not self.blocking:
            queued = self.queue_bytes()
            if len(self._queue) >= self._capacity or (queued and queued + size > self._byte_capacity):
                self._drop(entry, "queue_full")
                self._report("queue_full", "the queue is full (the sink is slower than the traffic)")
                return
        self._bytes_in += size
        self._queue.append((entry, size))

    async def reserve(self) -> None:
        """``block`` policy: wait until the queue has room for one more record, and hold it.

        Raises :class:`Unavailable` (503) when no room came within ``reserve_timeout_s``: a
        stalled disk then answers clients instead of holding them until their own timeouts.
        """
        if self._has_room():
            self._reserved += 1
            return
        room = self._room
        assert room is not None
        self._waiting += 1  # before the last check: the writer wakes us for any room made after it
        try:
            async with asyncio.timeout(self._reserve_timeout_s):
                while not self._has_room():
                    room.clear()
                    if self._has_room():
                        break
                    await room.wait()
        except TimeoutError:
            with self._counts_lock:
                self._reserve_timeouts += 1
            raise Unavailable("the prediction log has no room (its disk is full or slow); retry later") from None
        finally:
            self._waiting -= 1
        self._reserved += 1

    def _has_room(self) -> bool:
        # Bytes are checked as a request starts, before its record exists: the budget can be
        # passed by the records of the requests already running (at most max_concurrent_requests).
        return len(self._queue) + self._reserved < self._capacity and self.queue_bytes() < self._byte_capacity

    def release(self) -> None:
        """``block`` policy: give back a reservation that will not be used."""
        if self._reserved > 0:
            self._reserved -= 1
            self._notify_room()

    # -- what the collector reads ------------------------------------------------------------

    def records(self) -> dict[str, int]:
        """Records written, per model."""
        with self._counts_lock:
            return dict(self._written)

    def dropped(self) -> dict[tuple[str, str], int]:
        """Records dropped, per (model, reason)."""
        with self._counts_lock:
            return dict(self._dropped)

    def queue_depth(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    def queue_bytes(self) -> int:
        """Bytes of the records waiting to be written (and of the batch being written)."""
        return self._bytes_in - self._bytes_out

    def reserve_timeouts(self) -> int:
        """``block`` policy: requests answered 503 because no room came in time."""
        return self._reserve_timeouts

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not (self._stopping and not self._queue) and not self._abort:
                # Sleep between rounds even under load: a round then writes hundreds of records
                # with one system call per file, where chasing each arrival would cost one each.
                if not self._stopping:
                    self._wake.wait(self._flush_interval_s)
                    self._wake.clear()
                pending = len(self._queue)  # this round's share; later arrivals wait for the next
                while pending > 0 and not self._abort:
                    take = min(pending, _BATCH)
                    pending -= take
                    batch = [self._queue.popleft() for _ in range(take)]
                    try:
                        self._write([entry for entry, _ in batch])
                    finally:
                        self._bytes_out += sum(size for _, size in batch)
                    self._notify_room()
                    time.sleep(0)  # let the event loop run: encoding holds the GIL
        finally:
            for file in self._files.values():
                try:
                    file.close()
                except OSError as exc:
                    log.error("prediction log: closing %s failed: %s", file.directory, exc)

    def _write(self, batch: list[PredictionRecord]) -> None:
        groups: dict[tuple[str, str], tuple[list[bytes], list[PredictionRecord]]] = {}
        for entry in batch:
            for observer in self._observers:
                try:
                    observer(entry)
                except Exception:
                    log.exception("prediction log observer failed")
            try:
                line = self._encoder.encode(entry)
            except Exception as exc:
                self._drop(entry, "encode_error")
                self._report("encode_error", repr(exc))
                continue
            lines, entries = groups.setdefault((entry.model, entry.version), ([], []))
            lines.append(line)
            entries.append(entry)
        for key, (lines, entries) in groups.items():
            file = self._files.get(key)
            if file is None:
                rotate_bytes, rotate_s, compress = self._rotate
                file = self._files[key] = LogFile(
                    self.directory / key[0] / key[1], rotate_bytes=rotate_bytes, rotate_s=rotate_s,
                    compress=compress, clock=self._clock,
                )  # fmt: skip
            self._write_group(file, key[0], lines, entries)

    def _write_group(self, file: LogFile, model: str, lines: list[bytes], entries: list[PredictionRecord]) -> None:
        backoff = 0.05
        while True:
            try:
                file.write(b"".join(lines))
            except OSError as exc:
                # The lines that reached the file before the failure are written: count them,
                # and never write them again (a retry would duplicate them).
                done = bisect.bisect_right(list(itertools.accumulate(map(len, lines))), getattr(exc, "written", 0))
                if done:
                    self._count_written(model, done)
                    lines, entries = lines[done:], entries[done:]
                reason = failure_reason(exc)
                self._report(reason, f"{exc.strerror or exc} under {self.directory}")
                if self.blocking and not self._abort:
                    time.sleep(backoff)  # the queue fills behind us: requests wait, none is lost
                    backoff = min(1.0, backoff * 2)
                    continue
                for entry in entries:
                    self._drop(entry, reason if not self._abort else "shutdown")
                return
            self._count_written(model, len(entries))
            return

    def _count_written(self, model: str, count: int) -> None:
        with self._counts_lock:
            self._written[model] = self._written.get(model, 0) + count

    # -- helpers -----------------------------------------------------------------------------

    def _drop(self, entry: PredictionRecord, reason: str) -> None:
        key = (entry.model, reason)
        with self._counts_lock:
            self._dropped[key] = self._dropped.get(key, 0) + 1

    def _report(self, reason: str, detail: str) -> None:
        """Log a sink problem at most once per interval per reason, with the count since the last."""
        self._unreported[reason] = self._unreported.get(reason, 0) + 1
        now = self._clock()
        if now - self._reported.get(reason, -1e18) >= self._error_interval_s:
            count = self._unreported.pop(reason)
            self._reported[reason] = now
            log.error("prediction log: %s (%d occurrence(s) since the last report)", detail, count)

    def _notify_room(self) -> None:
        if self._waiting and self._loop is not None and self._room is not None:
            self._loop.call_soon_threadsafe(self._room.set)
