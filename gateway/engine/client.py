"""A worker's connection to one engine: a ZeroMQ DEALER, one future per request id.

The client says ``hello`` until the engine answers with its incarnation id, then pings it
every ``heartbeat_s``. The engine is *down* from the moment its socket disconnects (a socket
monitor reports it at once when the process dies), or when it has not answered for
``timeout_s``: every request in flight fails with 503 at once, and the listeners hear of it
(the loader marks the engine's versions not READY). When an engine answers again, with a new
incarnation, the listeners hear that too (the loader loads the versions again).

``IMMEDIATE`` is set: nothing is queued for an engine that is not connected, so a request
sent while it is down is refused at once and never reaches the next incarnation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from gateway.batching.queue import ClientWatch
from gateway.engine import wire
from gateway.engine.channel import Channel
from gateway.engine.errors import raise_error
from gateway.errors import ClientDisconnected, Unavailable
from runtimes.base import RuntimeLoadError

log = logging.getLogger(__name__)

#: Seconds between pings to an engine that answers.
HEARTBEAT_S = 0.5
#: An engine silent for this long is down (a hung process; a dead one is seen at once).
ENGINE_TIMEOUT_S = 5.0
#: Loads tried again when the engine goes down during one.
LOAD_ATTEMPTS = 3
#: Seconds between hellos to an engine that does not answer yet, and between checks of
#: clients that can say at once whether they have gone (uvicorn's flag, gRPC's context).
TICK_S = 0.05

Reply = tuple[dict[str, Any], wire.Message]


class EngineListener(Protocol):
    """Who hears of an engine going down and coming back (the worker's version loader)."""

    def engine_down(self, client: EngineClient, reason: str) -> None:
        """The engine stopped answering: its requests in flight have failed."""
        ...

    def engine_up(self, client: EngineClient) -> None:
        """The engine answers (again); its incarnation may be new."""
        ...


class EngineClient:
    """Requests to the engine of ``device``, over a DEALER connected to ``endpoint``."""

    def __init__(
        self,
        endpoint: str,
        *,
        device: str,
        identity: str,
        files: wire.SharedFiles,
        heartbeat_s: float = HEARTBEAT_S,
        timeout_s: float = ENGINE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.device = device
        self.identity = identity
        self.files = files
        self.up = False
        self.incarnation: str | None = None
        self.listeners: list[EngineListener] = []
        self._heartbeat_s = heartbeat_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        #: Requests whose clients are asked at every tick whether they have gone.
        self._watched: dict[int, ClientWatch] = {}
        self._up_event = asyncio.Event()
        self._heard = 0.0
        self._context: zmq.Context[Any] | None = None
        self._channel: Channel | None = None
        self._monitor: Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        """``the cpu engine``, for messages."""
        return f"the {self.device} engine"

    async def start(self) -> None:
        """Connect and start the reader, the monitor and the heartbeat (the engine may start later)."""
        self._context = zmq.Context()
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.IDENTITY, self.identity.encode())
        socket.setsockopt(zmq.IMMEDIATE, 1)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RECONNECT_IVL, 50)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
        socket.connect(self.endpoint)
        self._channel = Channel(socket, self._read)
        self._monitor = Channel(monitor, self._event)
        self._tasks = [asyncio.create_task(self._tick(), name=f"engine-{self.device}-tick")]

    async def close(self) -> None:
        """Let go of the engine's versions, fail what is in flight, and close the socket."""
        if self.up:
            self._post({"op": "bye"})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_pending(Unavailable("the server is shutting down"))
        if self._channel is not None:
            self._channel.socket.disable_monitor()
            if self._monitor is not None:
                self._monitor.close()
            self._channel.close(linger_ms=100)
        if self._context is not None:
            self._context.term()

    async def wait_up(self, timeout_s: float) -> None:
        """Wait until the engine answers; RuntimeLoadError after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._up_event.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeLoadError(f"{self.name} did not answer within {timeout_s:g} s", "engine") from None

    # -- requests -----------------------------------------------------------------------------

    async def load(self, model: str, version: int, timeout_s: float) -> dict[str, Any]:
        """Ask the engine to load (and hold) a version; its description, else RuntimeLoadError."""
        for attempt in range(LOAD_ATTEMPTS):
            await self.wait_up(timeout_s)
            try:
                header, _ = await self._call({"op": "load", "model": model, "version": version, "id": next(self._ids)})
                break
            except Unavailable as exc:  # the engine went down meanwhile: its next incarnation loads it
                if attempt == LOAD_ATTEMPTS - 1:
                    message = f"{self.name} kept restarting during the load ({exc.message})"
                    raise RuntimeLoadError(message, "engine") from None
        if not header.get("ok"):
            raise RuntimeLoadError(str(header.get("error")), str(header.get("reason") or "invalid_model"))
        return header

    async def unload(self, model: str, version: int) -> None:
        """Let go of a version (the engine unloads it once no worker holds it); best effort."""
        if self.up:
            self._post({"op": "unload", "model": model, "version": version, "id": next(self._ids)})

    async def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        batched: bool,
        priority: int = 0,
        timeout_s: float = 0.0,
        client: ClientWatch | None = None,
    ) -> list[np.ndarray]:
        """Compute ``outputs`` in the engine; a client that leaves cancels the request there."""
        header: dict[str, Any] = {
            "op": "infer",
            "id": next(self._ids),
            "m": model,
            "v": version,
            "o": list(outputs),
            "b": batched,
        }
        if priority:
            header["p"] = priority
        if timeout_s:
            header["to"] = timeout_s
        watcher = None
        if client is not None:
            gone = client.gone()
            if gone:
                raise ClientDisconnected()
            if gone is None:
                watcher = asyncio.ensure_future(client.wait_gone())
        if not self.up:
            if watcher is not None:
                watcher.cancel()
            raise Unavailable(f"{self.name} is restarting")
        frames = wire.encode(header, inputs.items(), self.files)
        reply, message = await self._call(header, frames, client if watcher is None else None, watcher)
        if not reply.get("ok"):
            raise_error(reply)
        arrays = wire.unpack(reply, message, self.files)
        return [arrays[name] for name in outputs]

    async def _call(
        self,
        header: dict[str, Any],
        frames: Sequence[wire.Frame] | None = None,
        client: ClientWatch | None = None,
        watcher: asyncio.Future[None] | None = None,
    ) -> Reply:
        channel = self._channel
        descriptors = header.get("t")
        if not self.up or channel is None:
            if descriptors:
                self.files.discard(descriptors)
            if watcher is not None:
                watcher.cancel()
            raise Unavailable(f"{self.name} is restarting")
        request_id = int(header["id"])
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if client is not None:
            self._watched[request_id] = client
        if watcher is not None:
            watcher.add_done_callback(partial(self._client_left, request_id))
        # Leaves at the end of this loop turn, with the other requests of the turn (one send).
        channel.post(frames or [wire.dumps(header)], on_fail=partial(self._not_sent, future, descriptors))
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)
            self._watched.pop(request_id, None)
            if watcher is not None:
                watcher.cancel()

    def _not_sent(self, future: asyncio.Future[Reply], descriptors: list[wire.Descriptor] | None) -> None:
        if descriptors:
            self.files.discard(descriptors)
        if not future.done():
            message = f"{self.name} cannot take requests now (not connected, or its queue is full)"
            future.set_exception(Unavailable(message))

    def _client_left(self, request_id: int, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            self.cancel(request_id)

    def cancel(self, request_id: int) -> None:
        """The request's client has gone: tell the engine, and answer the caller ClientDisconnected."""
        future = self._pending.pop(request_id, None)
        self._watched.pop(request_id, None)
        if future is None:
            return
        if not future.done():
            future.set_exception(ClientDisconnected())
        self._post({"op": "cancel", "id": request_id})

    def _post(self, header: dict[str, Any]) -> None:
        """Send without waiting for an answer (nothing is queued for an engine that is down)."""
        if self._channel is not None:
            self._channel.post([wire.dumps(header)])

    # -- the engine's state -------------------------------------------------------------------

    def _read(self, frames: list[zmq.Frame]) -> None:
        try:
            records = wire.decode_all(frames)
        except (ValueError, struct.error):
            log.warning("%s sent a malformed message", self.name)
            return
        self._heard = self._clock()
        pending = self._pending
        for header, message in records:
            future = pending.pop(header.get("id", 0), None)
            if future is None or future.done():
                if header.get("op") == "pong":
                    self._pong(str(header.get("incarnation")))
                else:
                    self.files.discard(header.get("t") or ())  # an answer nobody waits for any more
                continue
            future.set_result((header, message))

    def _pong(self, incarnation: str) -> None:
        if self.up and incarnation == self.incarnation:
            return
        if self.up:  # answered by a new incarnation before the disconnect was seen
            self._down("it restarted")
        if self.incarnation is not None and incarnation != self.incarnation:
            log.info("%s answers again (a new incarnation)", self.name)
        self.incarnation = incarnation
        self.up = True
        self._up_event.set()
        for listener in self.listeners:
            listener.engine_up(self)

    def _down(self, reason: str) -> None:
        if not self.up:
            return
        log.error("%s is down: %s; failing its requests in flight", self.name, reason)
        self.up = False
        self._up_event.clear()
        self._fail_pending(Unavailable(f"{self.name} is restarting"))
        for listener in self.listeners:
            listener.engine_down(self, reason)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        self._watched.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def _event(self, frames: list[zmq.Frame]) -> None:
        event = parse_monitor_message([frame.bytes for frame in frames])
        if event["event"] == zmq.EVENT_DISCONNECTED:
            self._down("its process exited")
        elif event["event"] == zmq.EVENT_CONNECTED:
            self._post({"op": "hello"})  # at once, not at the next tick

    async def _tick(self) -> None:
        next_ping = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            now = self._clock()
            for request_id, client in list(self._watched.items()):
                if client.gone():
                    self.cancel(request_id)
            if not self.up:
                self._post({"op": "hello"})
            elif now >= next_ping:
                if now - self._heard > self._timeout_s:
                    self._down(f"no answer for {self._timeout_s:g} s")
                    continue
                self._post({"op": "ping"})
                next_ping = now + self._heartbeat_s
