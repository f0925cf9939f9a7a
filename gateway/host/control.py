"""Control calls between the processes of a host: snapshots of a process's metrics and statistics.

Every process of a multi-process host (each worker, each engine) binds a ROUTER socket on
``control_endpoint(run_dir, process)`` and answers two calls from any peer:

- ``metrics``: its Prometheus families, as they are now (``Metric`` objects flattened to plain
  rows, see ``family_rows``);
- ``stats``: its per-version statistics, as Triton's ``model_stats`` entries.

A worker answering ``/metrics`` or the statistics extension asks every peer (``ask``) and
merges the answers with its own (gateway/host/merge.py). The request path never touches any of
this: the answers are built from the same lock-free accumulators ``/metrics`` reads in one
process, when a peer asks.

Every second, each process also leaves the same snapshot in ``<run_dir>/snapshots/`` (one file
per process and pid): the counts of a process that died stay in the host's sums (``retired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio
from prometheus_client.core import Metric

from gateway.stats import VersionStats

log = logging.getLogger(__name__)

#: How often a process leaves a snapshot of its counts in the run directory (see ``retired``).
SNAPSHOT_INTERVAL_S = 1.0
#: The sum of the snapshots of processes long dead (gateway/host/merge.py ``compact``).
RETIRED_FILE = "retired.json"
LOCK_FILE = ".lock"
#: The calls a control socket answers.
METRICS = b"metrics"
STATS = b"stats"

#: A family as plain values: ``[name, type, documentation, unit, [[sample name, labels, value], ...]]``.
FamilyRow = list[Any]
#: ``(model, version, its statistics)`` for every version a process holds.
StatsSource = Callable[[], Iterable[tuple[str, str, VersionStats]]]


def family_rows(families: Iterable[Metric]) -> list[FamilyRow]:
    """Families as plain rows (what crosses the socket; timestamps and exemplars are left out)."""
    rows: list[FamilyRow] = []
    for family in families:
        samples = [[s.name, s.labels, s.value] for s in family.samples]
        rows.append([family.name, family.type, family.documentation, family.unit, samples])
    return rows


def stats_rows(source: StatsSource) -> list[list[Any]]:
    """``[[model, version, Triton entry], ...]`` for every version ``source`` names."""
    return [[model, version, stats.to_triton(model, version)] for model, version, stats in source()]


class ControlServer:
    """A process's control socket: answers ``metrics`` and ``stats`` calls until closed.

    Owned by the process's lifespan: ``start`` binds (replacing a socket file a killed
    predecessor left) and starts the answering task; ``close`` stops it and removes the file.
    """

    def __init__(
        self,
        process: str,
        endpoint: str,
        metrics: Callable[[], Iterable[Metric]],
        stats: StatsSource,
        *,
        snapshots: Path | None = None,
        interval_s: float = SNAPSHOT_INTERVAL_S,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.process = process
        self.endpoint = endpoint
        self._metrics = metrics
        self._stats = stats
        #: Where this process leaves its latest snapshot every ``interval_s`` (None: nowhere).
        self.snapshot_path = snapshots / f"{process}-{os.getpid()}.json" if snapshots is not None else None
        self._interval_s = interval_s
        self._context = context or zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._snapshot_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind the control socket and answer calls in a task of this event loop."""
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        path = self.endpoint.removeprefix("ipc://")
        if path != self.endpoint:  # a killed process leaves its socket file; binding over it is refused
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        socket.bind(self.endpoint)
        self._socket = socket
        self._task = asyncio.create_task(self._serve(socket), name=f"control {self.process}")
        if self.snapshot_path is not None:
            self._snapshot_task = asyncio.create_task(self._leave_snapshots(self.snapshot_path), name="snapshots")
        log.debug("control socket of %s: %s", self.process, self.endpoint)

    async def close(self) -> None:
        """Stop answering and close the socket (its file goes with it)."""
        for task in (self._task, self._snapshot_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._snapshot_task = None
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.close(linger=0)
            # ZeroMQ removes the file in its I/O thread, later: remove it now, so that a peer
            # scraping right after this process stopped does not wait on a socket nobody serves.
            path = self.endpoint.removeprefix("ipc://")
            if path != self.endpoint:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def answer(self, call: bytes) -> bytes:
        """The reply to one call (an error object for an unknown call or a failed snapshot)."""
        try:
            if call == METRICS:
                body: dict[str, Any] = {"metrics": family_rows(self._metrics())}
            elif call == STATS:
                body = {"stats": stats_rows(self._stats)}
            else:
                body = {"error": f"unknown control call {call[:40]!r}"}
        except Exception as exc:  # a snapshot that fails must not end the control task
            log.exception("control call %r failed in %s", call, self.process)
            body = {"error": f"{type(exc).__name__}: {exc}"}
        body["process"] = self.process
        body["pid"] = os.getpid()
        return orjson.dumps(body)

    def snapshot(self) -> bytes:
        """Metrics and statistics together, as a snapshot file holds them."""
        body = {"metrics": family_rows(self._metrics()), "stats": stats_rows(self._stats)}
        return orjson.dumps({**body, "process": self.process, "pid": os.getpid()})

    async def _leave_snapshots(self, path: Path) -> None:
        """Every ``interval_s``: this process's counts, for the scrapes after it died (see ``retired``)."""
        failing = False
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                data = self.snapshot()  # on the loop: it reads the loop's counters
                await asyncio.to_thread(replace_file, path, data)
            except Exception:  # a full disk must not end the task: the next round tries again
                if not failing:  # logged once per failure spell, not every second
                    log.exception("%s: writing its metrics snapshot failed (retried every second)", self.process)
                failing = True
            else:
                if failing:
                    log.info("%s: metrics snapshots written again", self.process)
                failing = False

    async def _serve(self, socket: zmq.asyncio.Socket) -> None:
        while True:
            frames = await socket.recv_multipart()
            if len(frames) < 2:
                continue  # not a DEALER's message: nothing to answer
            identity, call = frames[0], frames[-1]
            await socket.send_multipart([identity, self.answer(call)])


def snapshot_dir(run_dir: Path) -> Path:
    """Where a host's processes leave their snapshots."""
    return run_dir / "snapshots"


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


def retired(snapshots: Path, live: set[int]) -> list[dict[str, Any]]:
    """The last snapshots of the host's processes that are not in ``live`` (pids): dead, or not answering.

    A killed worker or engine takes its counters with it; the host's sums would then fall, and
    Prometheus would read the fall as a counter reset (a spike in every ``rate``). Its last
    snapshot (at most ``SNAPSHOT_INTERVAL_S`` old) keeps its counts in the sums instead.
    """
    if not snapshots.is_dir():
        return []
    found = []
    with locked(snapshots, exclusive=False):  # not while dead processes' files are being folded
        for path in sorted(snapshots.glob("*.json")):
            if path.name != RETIRED_FILE and snapshot_pid(path) in live:
                continue
            snapshot = read_snapshot(path)
            if snapshot is not None:
                found.append(snapshot)
    return found


def snapshot_pid(path: Path) -> int:
    """The pid a snapshot file's name carries (``worker-0-1234.json``); 0 for another file."""
    tail = path.stem.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """A snapshot file's content; None when it is unreadable (removed while listed, not a snapshot)."""
    try:
        snapshot = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if isinstance(snapshot, dict) and "metrics" in snapshot and "stats" in snapshot:
        return snapshot
    return None


@contextmanager
def locked(snapshots: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the snapshot directory's lock (``flock``): shared to read, exclusive to fold files together."""
    snapshots.mkdir(parents=True, exist_ok=True)
    with open(snapshots / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


async def ask(context: zmq.asyncio.Context, endpoint: str, call: bytes, timeout_s: float) -> dict[str, Any] | None:
    """One control call to a peer; None when it does not answer within ``timeout_s`` or answers an error.

    A fresh DEALER per call: a dead peer's queued request dies with the socket (LINGER 0), and
    a late answer can never be taken for the next call's.
    """
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        await socket.send(call)
        if not await socket.poll(int(timeout_s * 1000)):  # POLLIN by default
            return None
        reply = orjson.loads(await socket.recv())
    except (zmq.ZMQError, orjson.JSONDecodeError) as exc:
        log.debug("control call to %s failed: %s", endpoint, exc)
        return None
    finally:
        socket.close(linger=0)
    if not isinstance(reply, dict) or "error" in reply:
        error = reply.get("error") if isinstance(reply, dict) else reply
        log.warning("control call %r to %s: %s", call, endpoint, error)
        return None
    return reply
