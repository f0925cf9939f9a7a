"""The engine's socket: a ZeroMQ ROUTER that serves the workers' messages.

Every message is ``[worker identity, records, *tensor frames]`` (gateway/engine/wire.py): one
record, or several that the worker sent in one loop turn, each handled in order. A record's
``op``: ``hello`` and ``ping`` (answered with this incarnation's id), ``load`` and
``unload`` (refcounted per worker), ``infer`` (through the version's batcher, or its executor
when it does not batch) and ``cancel`` (the worker's client left: the request leaves the
queue, or its answer is dropped). Every request is answered by its ``id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import zmq

from gateway.engine import wire
from gateway.engine.catalogue import EngineModels
from gateway.engine.channel import Channel
from gateway.engine.errors import error_reply
from gateway.errors import Unavailable
from runtimes.executor import Executor

log = logging.getLogger(__name__)

#: A worker silent for this long (no ping, no request) has gone: its versions are let go.
WORKER_TIMEOUT_S = 15.0
#: How often the engine looks for silent workers.
SWEEP_S = 5.0


class EngineServer:
    """Serves one device's versions to the workers over ``endpoint``."""

    def __init__(
        self,
        endpoint: str,
        models: EngineModels,
        files: wire.SharedFiles,
        *,
        device: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.models = models
        self.files = files
        self.device = device
        #: Changes at every start: a worker that sees a new one loads its versions again.
        self.incarnation = uuid.uuid4().hex
        self._clock = clock
        self._context = zmq.Context()
        self._socket: zmq.Socket[Any] = self._context.socket(zmq.ROUTER)
        self._channel: Channel | None = None
        #: (worker, request id) -> the task computing it.
        self._tasks: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._seen: dict[bytes, float] = {}
        #: Workers whose holds the sweep released while they were silent (a stalled loop, not a
        #: dead process): they are told a new incarnation, so they load their versions again.
        self._forgotten: dict[bytes, str] = {}
        self._stopping = False
        self._sweeper: asyncio.Task[None] | None = None

    def bind(self) -> None:
        """Bind the socket (the previous incarnation's leftovers are removed first)."""
        removed = self.files.clean()
        if removed:
            log.info("removed %d shared tensors left by a previous engine", removed)
        self._socket.bind(self.endpoint)

    @property
    def inflight(self) -> int:
        """Requests being computed or queued."""
        return len(self._tasks)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then finish what is in flight and return."""
        self._sweeper = asyncio.create_task(self._sweep_workers(), name="engine-sweep-workers")
        self._channel = Channel(self._socket, self._handle)
        try:
            await stop.wait()
            self._stopping = True
            # In-flight requests finish and are answered; new ones are refused meanwhile.
            while self._tasks:
                await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        finally:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    def close(self) -> None:
        """Close the socket (answers still queued get a second to leave) and the ZeroMQ context."""
        if self._channel is not None:
            self._channel.close(linger_ms=1000)
        else:
            self._socket.close(linger=0)
        self._context.term()

    def _send(self, worker: bytes, frames: list[wire.Frame]) -> None:
        # A ROUTER never blocks a send: to a worker gone or over its queue, the answer is dropped.
        # The answers to one worker completed in one loop turn leave as one message.
        assert self._channel is not None
        self._channel.post(frames, worker, partial(self._dropped, worker))

    def _dropped(self, worker: bytes) -> None:
        log.warning("engine: an answer to %s was dropped", worker.decode(errors="replace"))

    def _reply(self, worker: bytes, header: dict[str, Any]) -> None:
        self._send(worker, [wire.dumps(header)])

    def _answer(self, worker: bytes, request_id: int, names: list[str], results: list[np.ndarray]) -> None:
        header: dict[str, Any] = {"id": request_id, "ok": True}
        try:
            frames = wire.encode(header, zip(names, results, strict=True), self.files)
        except Exception as exc:  # a shared-memory file it cannot write (a full /dev/shm), a bug
            # Every request gets an answer: one never sent would leave the worker's client waiting.
            log.warning("engine: cannot send the answer to request %d: %s", request_id, exc)
            self._reply(worker, error_reply(request_id, exc))
            return
        self._send(worker, frames)

    def _handle(self, frames: list[Any]) -> None:
        worker = frames[0].bytes
        records = wire.decode_all(frames[1:])
        self._seen[worker] = self._clock()
        for header, message in records:
            try:
                self._handle_one(worker, header, message)
            except Exception:  # one bad request must not lose the others of its message
                log.exception("engine: a message from %s could not be handled", worker.decode(errors="replace"))

    def _handle_one(self, worker: bytes, header: dict[str, Any], message: wire.Message) -> None:
        op = header.get("op")
        if op == "infer":
            request_id = int(header["id"])
            if self._stopping:
                self._reply(worker, error_reply(request_id, Unavailable("the engine is stopping")))
                return
            try:
                inputs = wire.unpack(header, message, self.files)
            except Exception as exc:
                self._reply(worker, error_reply(request_id, exc))
                return
            if self._infer_inline(worker, header, inputs):
                return
            key = (worker, request_id)
            task = asyncio.create_task(self._infer(worker, header, inputs))
            self._tasks[key] = task
            task.add_done_callback(lambda _: self._tasks.pop(key, None))
        elif op == "cancel":
            running = self._tasks.get((worker, int(header["id"])))
            if running is not None:
                running.cancel()
        elif op in ("hello", "ping"):
            reply = {"op": "pong", "id": header.get("id", 0), "ok": True}
            reply.update(incarnation=self._forgotten.get(worker, self.incarnation), device=self.device)
            self._reply(worker, reply)
        elif op == "load":
            self._spawn(self._load(worker, header))
        elif op == "unload":
            self._spawn(self._unload(worker, header))
        elif op == "bye":
            self._spawn(self.models.release_worker(worker))
        else:
            log.warning("engine: unknown message %r", op)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        key = (b"", id(task))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _load(self, worker: bytes, header: dict[str, Any]) -> None:
        request_id = int(header["id"])
        try:
            info = await self.models.load(worker, str(header["model"]), int(header["version"]))
        except Exception as exc:
            self._reply(worker, error_reply(request_id, exc))
            return
        self._reply(worker, {"id": request_id, "ok": True, "incarnation": self.incarnation, **info})

    async def _unload(self, worker: bytes, header: dict[str, Any]) -> None:
        try:
            await self.models.unload(worker, str(header["model"]), int(header["version"]))
        except Exception:
            log.exception("engine: unloading %s version %s failed", header.get("model"), header.get("version"))
        self._reply(worker, {"id": int(header["id"]), "ok": True})

    def _infer_inline(self, worker: bytes, header: dict[str, Any], inputs: dict[str, np.ndarray]) -> bool:
        """A call of an unbatched version that its executor runs on the loop: at once, no task."""
        mv = self.models.servable(header["m"], header["v"])
        executor = mv.executor if mv is not None and (mv.batcher is None or not header.get("b", True)) else None
        if not isinstance(executor, Executor):
            return False
        request_id = int(header["id"])
        names: list[str] = header["o"]
        if not executor.runs_inline(sum(a.size for a in inputs.values())):
            return False
        try:
            results = executor.runtime.run(inputs, names)
        except Exception as exc:
            self._reply(worker, error_reply(request_id, exc))
            return True
        self._answer(worker, request_id, names, results)
        return True

    async def _infer(self, worker: bytes, header: dict[str, Any], inputs: dict[str, np.ndarray]) -> None:
        request_id = int(header["id"])
        try:
            mv = self.models.servable(header["m"], header["v"])
            if mv is None:
                raise Unavailable(f"version {header['v']} of model {header['m']!r} is not loaded in the engine")
            names: list[str] = header["o"]
            batcher = mv.batcher
            if batcher is not None and header.get("b", True):
                rows = int(next(iter(inputs.values())).shape[0])
                results = await batcher.submit(
                    inputs, names, rows, priority=int(header.get("p", 0)), timeout_s=float(header.get("to", 0.0))
                )
            else:
                executor = mv.executor
                assert executor is not None  # READY
                elements = sum(a.size for a in inputs.values())
                timeout = float(header.get("to", 0.0))
                results = await executor.run(inputs, names, elements, timeout or None)
        except asyncio.CancelledError:
            return  # the worker's client left: the worker answers nobody, nor do we
        except Exception as exc:
            self._reply(worker, error_reply(request_id, exc))
            return
        self._answer(worker, request_id, names, results)

    async def _sweep_workers(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = self._clock()
            for worker, seen in list(self._seen.items()):
                if now - seen > WORKER_TIMEOUT_S:
                    del self._seen[worker]
                    log.info(
                        "engine: worker %s stopped answering; releasing its versions", worker.decode(errors="replace")
                    )
                    self._forgotten[worker] = f"{self.incarnation}.{len(self._forgotten) + 1}"
                    try:
                        await self.models.release_worker(worker)
                    except Exception:  # the sweep goes on for the others
                        log.exception("engine: releasing the versions of %s failed", worker.decode(errors="replace"))
