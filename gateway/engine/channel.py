"""A ZeroMQ socket served straight from the event loop: a callback per message, sends that never wait.

pyzmq's ``zmq.asyncio`` makes a future for every send and receive and adds and removes its
reader as it goes; on the engine hop that doubled the round trip (loadtests/engine_hop.py,
docs/benchmarks.md). Here the socket's notification descriptor is watched once; when it fires
(and after every send, since ZeroMQ's descriptor is edge-like: an operation on the socket may
consume the signal of a message already waiting), every waiting message is read without
blocking and handed to ``on_message``, in order, on the loop.

``post`` coalesces: the first message posted in a turn of the loop leaves at once (a lone
request waits for nothing: deferring it cost 80 us per round trip at concurrency 1); the
messages posted to one peer after it in the same turn leave as one ZeroMQ message at the end
of the turn (their single-frame records one after the other, see gateway/engine/wire.py). A
ZeroMQ send wakes its I/O thread and costs tens of microseconds on a busy core, more than the
records it carries; at concurrency 64 the requests a worker takes in one turn, and the answers
of one batch, share two sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import zmq

log = logging.getLogger(__name__)

#: Plain ints: pyzmq's enum members cost microseconds per call on this path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
#: Messages handled per wake-up before the loop gets a turn (a flood must not starve it).
BURST = 256


class Channel:
    """Reads ``socket`` on the running loop into ``on_message``; ``send`` never blocks."""

    def __init__(self, socket: zmq.Socket[Any], on_message: Callable[[list[zmq.Frame]], None]) -> None:
        self.socket = socket
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._fd = int(socket.getsockopt(zmq.FD))
        self._scheduled = False
        self._closed = False
        #: Peer (routing identity, b"" for none) -> messages posted this turn, and who hears of a failed send.
        self._outbox: dict[bytes, list[tuple[Sequence[Any], Callable[[], None] | None]]] = {}
        self._flushing = False
        self._loop.add_reader(self._fd, self._drain)
        self._schedule()  # messages may already wait: the descriptor signals only changes

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        socket = self.socket
        for _ in range(BURST):
            if self._closed or not _readable(socket):
                return
            try:
                frames = socket.recv_multipart(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._on_message(frames)
            except Exception:  # one bad message must not stop the channel
                log.exception("a message on %s could not be handled", self._fd)
        self._schedule()  # more may wait: after the loop's other work

    def send(self, parts: Sequence[Any]) -> bool:
        """Send one message without waiting; False when it cannot go now (no peer, or its queue is full)."""
        if self._closed:
            return False
        try:
            self.socket.send_multipart(parts, _NOBLOCK, copy=False)
        except zmq.Again:
            return False
        finally:
            if _readable(self.socket):
                self._schedule()
        return True

    def post(self, frames: Sequence[Any], to: bytes = b"", on_fail: Callable[[], None] | None = None) -> None:
        """Send ``frames`` (a message, to peer ``to`` on a ROUTER): now, or at the end of this loop turn.

        The turn's first message goes at once; the single-frame messages posted after it to one
        peer go as one at the end of the turn (their frames joined); a message of several frames
        goes on its own, in order. ``on_fail`` is called when it cannot go.
        """
        if self._closed:
            if on_fail is not None:
                on_fail()
            return
        if not self._flushing:  # the first of this turn
            self._flushing = True
            self._loop.call_soon(self.flush)
            if not self.send([to, *frames] if to else frames) and on_fail is not None:
                on_fail()
            return
        box = self._outbox.get(to)
        if box is None:
            box = self._outbox[to] = []
        box.append((frames, on_fail))

    def flush(self) -> None:
        """Send what was posted (normally at the end of the turn it was posted in)."""
        self._flushing = False
        outbox, self._outbox = self._outbox, {}
        for to, messages in outbox.items():
            prefix = [to] if to else []
            joined: list[Any] = []
            failures: list[Callable[[], None]] = []
            for frames, on_fail in messages:
                if len(frames) == 1:
                    joined.append(frames[0])
                    if on_fail is not None:
                        failures.append(on_fail)
                    continue
                self._send_joined(prefix, joined, failures)
                joined, failures = [], []
                if not self.send([*prefix, *frames]) and on_fail is not None:
                    on_fail()
            self._send_joined(prefix, joined, failures)

    def _send_joined(self, prefix: list[Any], joined: list[Any], failures: list[Callable[[], None]]) -> None:
        if not joined:
            return
        packet = joined[0] if len(joined) == 1 else b"".join(joined)
        if not self.send([*prefix, packet]):
            for on_fail in failures:
                on_fail()

    def close(self, linger_ms: int = 0) -> None:
        """Send what was posted, stop reading and close the socket."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._loop.remove_reader(self._fd)
        self.socket.close(linger=linger_ms)


def _readable(socket: zmq.Socket[Any]) -> bool:
    """Whether a message waits (the descriptor alone cannot tell)."""
    return bool(socket.getsockopt(_EVENTS) & _POLLIN)  # type: ignore[operator]
