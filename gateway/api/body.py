"""Reading a request body within limits: size (before reading), type and encoding.

Starlette's RequestBodyLimitMiddleware counts bytes on the wire; we must also count what a
compressed body inflates to (a 100 KB gzip bomb can hold gigabytes), so the limit lives here,
in the one function that reads bodies.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

#: Media types an inference body may declare (none at all is fine too: tritonclient sends none).
#: ``application/x-www-form-urlencoded`` is what ``curl -d`` sends when not told otherwise.
INFER_MEDIA_TYPES = frozenset({"", "application/json", "application/octet-stream", "application/x-www-form-urlencoded"})
#: Content-Type values sent as they are by most clients, accepted without parsing.
_COMMON = frozenset({b"", b"application/json", b"application/octet-stream"})
# wbits per Content-Encoding: 16+ for the gzip wrapper, plain for zlib ("deflate" per RFC 9110).
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(slots=True)
class BodyHeaders:
    """The request headers that reading and decoding a body depend on (raw, as sent)."""

    content_type: bytes = b""
    content_length: bytes | None = None
    content_encoding: bytes = b""
    header_length: bytes | None = None
    request_id: bytes | None = None
    duplicated: bytes | None = None

    @classmethod
    def parse(cls, scope: Scope) -> BodyHeaders:
        """One pass over the raw header list (names arrive lower-cased from the server)."""
        found = cls()
        for key, value in scope["headers"]:
            if key == b"content-type":
                found.content_type = value
            elif key == b"content-length":
                found.content_length = value
            elif key == b"inference-header-content-length":
                if found.header_length is not None:
                    found.duplicated = key
                found.header_length = value
            elif key == b"content-encoding":
                found.content_encoding = value
            elif key == b"x-request-id":
                found.request_id = value
        return found

    def check_media_type(self) -> None:
        """415 unless the Content-Type is one of INFER_MEDIA_TYPES (parameters such as charset ignored)."""
        if self.content_type in _COMMON:
            return
        media = self.content_type.partition(b";")[0].strip().lower().decode("latin-1")
        if media not in INFER_MEDIA_TYPES:
            raise UnsupportedMediaType(f"unsupported Content-Type {media!r:.60}")


async def read_body(receive: Receive, headers: BodyHeaders, limit: int) -> bytes:
    """The whole body, decompressed; 413 as soon as it (or its decompressed form) passes ``limit``."""
    declared = headers.content_length
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
    encoding = headers.content_encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return await _read_counted(receive, limit)
    wbits = _DECODERS.get(encoding.decode("latin-1"))
    if wbits is None:
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding.decode('latin-1')!r:.40}")
    return await _read_decompressed(receive, limit, wbits)


async def _chunks(receive: Receive) -> tuple[bytes, bool]:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return message.get("body", b""), message.get("more_body", False)


async def _read_counted(receive: Receive, limit: int) -> bytes:
    chunk, more = await _chunks(receive)
    if not more:
        return chunk  # the common case: the whole body in one message
    parts, total = [chunk], len(chunk)
    while more:
        chunk, more = await _chunks(receive)
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
        parts.append(chunk)
    return b"".join(parts)


async def _read_decompressed(receive: Receive, limit: int, wbits: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    parts, total, more = [], 0, True
    try:
        while more:
            data, more = await _chunks(receive)
            # max_length bounds each step, so a small bomb never inflates past the limit in memory.
            while data:
                out = decoder.decompress(data, limit - total + 1)
                total += len(out)
                if total > limit:
                    raise PayloadTooLarge(f"decompressed request body over the {limit} byte limit")
                parts.append(out)
                data = decoder.unconsumed_tail
        tail = decoder.flush()
    except zlib.error:
        raise BadRequest("request body is not valid compressed data") from None
    total += len(tail)
    if total > limit:
        raise PayloadTooLarge(f"decompressed request body over the {limit} byte limit")
    if not decoder.eof:
        raise BadRequest("compressed request body is truncated")
    parts.append(tail)
    return b"".join(parts)
