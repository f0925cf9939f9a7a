"""A tiny raw-socket HTTP/1.1 client: sends exactly the bytes a test wants, lies included."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import BinaryIO

import orjson


@dataclass
class Reply:
    """A parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        """The body as JSON."""
        return orjson.loads(self.body)


def read_reply(sock: socket.socket | BinaryIO) -> Reply:
    """Read one response with a Content-Length body (from a socket, or its buffered file)."""
    stream = sock.makefile("rb") if isinstance(sock, socket.socket) else sock
    status_line = stream.readline()
    if not status_line:
        raise ConnectionError("connection closed before the response")
    status = int(status_line.split()[1])
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return Reply(status, headers, body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: bool = True,
    timeout_s: float = 10.0,
) -> Reply:
    """Send one request on a fresh connection and read the reply."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if content_length and body is not None and method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(raw)
        return read_reply(sock)


def send_and_leave(port: int, path: str, body: bytes, wait_s: float) -> None:
    """POST a JSON ``body`` on a fresh connection and close it ``wait_s`` later, before the answer."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        time.sleep(wait_s)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a ``Transfer-Encoding: chunked`` body; ``chunk(b"")`` ends the body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def open_chunked(
    port: int, path: str, headers: dict[str, str] | None = None, *, timeout_s: float = 30.0
) -> socket.socket:
    """A connection with a chunked POST's request line and headers sent: send its chunks, then read."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Transfer-Encoding: chunked"]
    lines.extend(f"{key}: {value}" for key, value in (headers or {}).items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return sock
