"""HTTP/1.1 transport limits on top of uvicorn's httptools protocol (RELIABILITY.md section C).

uvicorn bounds idle keep-alive connections but not a request that arrives slowly: a client
sending its headers a byte a second (slowloris) or its body a byte a second (R.U.D.Y.) would
hold a connection, and its memory, for ever. This protocol adds:

- a header deadline (from the connection's start or the request's first byte to the end of
  its headers): 408 and close;
- a body deadline (from the end of the headers to the end of the body): 408 and close;
- header limits: more than ``max_header_bytes`` of request line and headers, or more than
  ``max_headers`` fields, is answered 431 and the connection closed; the same limits bound
  a chunked body's trailer fields (which the gateway ignores) and its framing, so bytes that
  are not body never pile up in the parser (a 100 MiB trailer field held the event loop for
  seconds);
- a cap on open connections: past it, new connections are closed at once;
- a send deadline: a client that accepts none of what we have written to it for
  ``send_timeout_s`` (its kernel buffer full, ours not shrinking) is disconnected. Without it a
  client that never reads would hold its whole response in our write buffer for ever: the
  response is written in one call, the handler returns, and closing waits for the buffer.

Deadlines are checked by one sweep a second over all connections (``GatewayServer``) rather
than a timer per request: arming and cancelling timers would cost every request a few
microseconds; setting a number costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.api.responses import error_reply

log = logging.getLogger(__name__)

_IDLE, _HEADERS, _BODY = 0, 1, 2
#: Bytes of chunked framing allowed per piece of body the parser hands over (a size line and CRLFs).
_FRAMING_PER_PIECE = 32


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """The limits one server applies to every connection."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_connections: int = 2048
    send_timeout_s: float = 30.0


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are over a limit."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and header limits."""

    limits: ClassVar[TransportLimits] = TransportLimits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase = _IDLE
        self._deadline = 0.0  # loop time; 0: none
        self._raw_bytes = 0  # bytes received since the last request ended: bounds the headers' size
        self._body_bytes = 0  # of those, the body's, and in how many pieces (chunk framing is per piece)
        self._body_pieces = 0
        self._trailers = 0  # trailer fields of the request (after a chunked body)
        self._send_deadline = 0.0  # loop time by which the client must take some of what is unsent; 0: none
        self._unsent = 0  # our write buffer's size at the last sweep

    @classmethod
    def with_limits(cls, limits: TransportLimits) -> type[GuardedHttpToolsProtocol]:
        """A protocol class bound to ``limits`` (uvicorn instantiates the class itself)."""
        return type("GuardedHttpToolsProtocol", (cls,), {"limits": limits})

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection unless the cap is reached; the header deadline starts now."""
        if len(self.connections) >= self.limits.max_connections:
            transport.close()  # connection_lost follows; nothing else was set up
            self.transport = transport
            return
        super().connection_made(transport)
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline with the connection."""
        self._deadline = 0.0
        if self.flow is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with a 431 for headers over the limits instead of a generic 400."""
        self._unset_keepalive_if_required()
        self._raw_bytes += len(data)  # since the last request ended: bounds the next one's headers
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge):
                self.refuse(431, "request headers too large")
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Headers still incomplete: bound what the parser may be holding of them.
        if self._phase == _HEADERS and self._raw_bytes > self.limits.max_header_bytes:
            self.refuse(431, "request headers too large")
        # In the body: what is not body (headers, chunk sizes, trailers) stays within the header
        # limit plus a little per piece of body (chunked framing: a size line per chunk).
        elif self._phase == _BODY:
            allowed = 2 * self.limits.max_header_bytes + _FRAMING_PER_PIECE * self._body_pieces
            if self._raw_bytes - self._body_bytes > allowed:
                self.refuse(431, "request trailers or chunk framing too large")

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request's first byte: its header deadline starts (unless the connection's runs)."""
        super().on_message_begin()
        self._body_bytes = self._body_pieces = self._trailers = 0
        self._start_headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header; after the headers, a trailer field: bounded like a header, then dropped."""
        if self._phase != _BODY:
            super().on_header(name, value)
            return
        self._trailers += 1
        if self._trailers > self.limits.max_headers:
            raise _HeadersTooLarge

    def on_body(self, body: bytes) -> None:
        """Count the body's bytes and pieces (what is received besides them is bounded)."""
        self._body_bytes += len(body)
        self._body_pieces += 1
        super().on_body(body)

    def on_headers_complete(self) -> None:
        """Headers done: check them against the limits; the body deadline starts."""
        if len(self.headers) > self.limits.max_headers:
            raise _HeadersTooLarge
        # Bytes received so far bound the headers' size; only a large read needs the exact sum.
        if self._raw_bytes > self.limits.max_header_bytes:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.limits.max_header_bytes:
                raise _HeadersTooLarge
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _CoalescingWriter(self.transport, self.loop)  # type: ignore[assignment]
        self._phase = _BODY
        self._deadline = self.loop.time() + self.limits.body_timeout_s

    def on_message_complete(self) -> None:
        """Body done: the application's own deadlines apply from here."""
        super().on_message_complete()
        self._phase = _IDLE
        self._deadline = 0.0
        self._raw_bytes = 0

    # -- limits --------------------------------------------------------------------------------

    def _start_headers(self) -> None:
        if self._phase != _HEADERS:
            self._phase = _HEADERS
            self._deadline = self.loop.time() + self.limits.header_timeout_s

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep: 408 for a request past its deadline; drop a client not reading."""
        if self.flow is not None and self._check_send(now):
            return
        if not self._deadline or now < self._deadline or self.transport.is_closing():
            return
        if self._phase == _HEADERS:
            self.refuse(408, "request headers not received in time")
        elif self._phase == _BODY:
            self.refuse(408, "request body not received in time")

    def _check_send(self, now: float) -> bool:
        """Abort the connection if its client took none of our unsent bytes within the send deadline.

        Polled by the sweep rather than driven by pause_writing: a response below the write
        buffer's high-water mark never pauses, yet it too can sit unsent for ever.
        """
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            self._send_deadline = 0.0
        elif not self._send_deadline or unsent < self._unsent:
            self._send_deadline = now + self.limits.send_timeout_s  # a stall begins, or the client took some
        elif now >= self._send_deadline:
            log.info("dropped a connection from %s: it read none of its response in time", _peer(self.client))
            self._phase, self._deadline, self._send_deadline = _IDLE, 0.0, 0.0
            self.transport.abort()  # close() would wait for the buffer to drain, i.e. for ever
            return True
        self._unsent = unsent
        return False

    def send_400_response(self, msg: str) -> None:
        """A request the parser cannot read: 400 with the JSON error every answer has, then close.

        (uvicorn's is plain text: ``Invalid HTTP request received.``)
        """
        self.refuse(400, "invalid HTTP request")

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` if the request being received can still be answered, then close."""
        cycle = self.cycle
        if self._phase == _BODY:
            answerable = cycle is not None and not cycle.response_started
        else:  # headers: no response of this connection may be half sent
            answerable = cycle is None or cycle.response_complete
        self._phase, self._deadline = _IDLE, 0.0
        if answerable:
            reply = error_reply(status, message, {"connection": "close"})
            head = b"".join(b"%s: %s\r\n" % pair for pair in reply.headers)
            self.transport.write(b"".join([STATUS_LINE[status], head, b"\r\n", reply.body]))
        if cycle is not None and not cycle.response_complete:
            # The application sees a disconnect: it stops reading and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        log.info("closed a connection from %s: %s", _peer(self.client), message)
        self.transport.close()


class _CoalescingWriter:
    """A response's transport that holds its head back until the body, so both go in one send().

    uvicorn writes a response's head and its body with two ``transport.write`` calls, and
    uvloop sends each at once: two system calls and two TCP segments per response, a tenth of
    a small inference's time. The head is held until the next write (the body, in the same turn
    of the event loop for every response we send) or, at the latest, the end of this turn.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Hold the first write; send it together with the next."""
        if self._held is None:
            if not self._transport.is_closing():
                self._held = bytes(data)
                self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, b""
        self._transport.write(held + data if held else data)

    def flush(self) -> None:
        """Send what is held (end of the loop turn, or before closing)."""
        held, self._held = self._held, b""
        if held and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        """The transport's."""
        return self._transport.is_closing()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"
