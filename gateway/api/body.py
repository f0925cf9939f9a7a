"""Reading a request body within limits: size (before reading), type and encoding.

Starlette's RequestBodyLimitMiddleware counts bytes on the wire; we must also count what a
compressed body inflates to (a 62 KB gzip holds 64 MiB of ``[0,0,...]``, a 1 MB one a
gigabyte), so the limits live here, in the one function that reads bodies:

- ``limit`` bounds the bytes on the wire and the body as the handler gets it;
- ``decompressed_limit`` (lower by default) bounds what a compressed body inflates to;
- ``budget`` counts the bytes of every body in memory at once (503 past it).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from gateway.errors import BadRequest, PayloadTooLarge, Unavailable, UnsupportedMediaType
from gateway.lifecycle import Lifecycle

#: Media types an inference body may declare (none at all is fine too: tritonclient.http sends
#: none, its asyncio client sends application/octet-stream, curl's examples application/json).
#: The three types a browser may send cross-site without a CORS preflight
#: (application/x-www-form-urlencoded, multipart/form-data, text/plain) are refused, so that a
#: web page cannot make its visitors' browsers post predictions (and prediction-log records).
INFER_MEDIA_TYPES = frozenset({"", "application/json", "application/octet-stream"})
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
    #: What a browser says of where a request comes from (``Origin``, ``Sec-Fetch-Site``).
    origin: bytes | None = None
    fetch_site: bytes | None = None

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
            elif key == b"origin":
                found.origin = value
            elif key == b"sec-fetch-site":
                found.fetch_site = value
        return found

    def check_media_type(self) -> None:
        """415 unless the Content-Type is one of INFER_MEDIA_TYPES (parameters such as charset ignored).

        No Content-Type at all is what tritonclient.http sends, but also what a browser sends for
        a cross-site ``fetch`` of an untyped Blob, without a preflight: refused when the request
        says it comes from another site's page (no client of ours sends these headers).
        """
        if self.content_type in _COMMON:
            if not self.content_type and self._cross_site():
                raise UnsupportedMediaType(
                    "a cross-site browser request needs Content-Type: application/json (and so a CORS "
                    "preflight, which this server does not grant)"
                )
            return
        media = self.content_type.partition(b";")[0].strip().lower().decode("latin-1")
        if media not in INFER_MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"unsupported Content-Type {media!r:.60}: send application/json (or, for the binary "
                "extension, application/octet-stream)"
            )

    def _cross_site(self) -> bool:
        site = self.fetch_site
        if site is not None:  # Fetch Metadata: every current browser sends it
            return site.strip().lower() not in (b"same-origin", b"none")
        return self.origin is not None  # older browsers: Origin on every cross-origin POST


async def read_body(
    receive: Receive,
    headers: BodyHeaders,
    limit: int,
    decompressed_limit: int | None = None,
    budget: Lifecycle | None = None,
) -> bytes:
    """The whole body, decompressed; 413 as soon as it passes a limit, 503 past the byte budget.

    ``limit`` bounds the bytes on the wire and the body returned; a compressed body's inflated
    size is also bounded by ``decompressed_limit``. With a ``budget``, a body returned holds
    ``len(body)`` bytes of it: the caller gives them back with ``budget.release_body`` once the
    request is done (a failed read has given back what it took).
    """
    declared = headers.content_length
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        size = int(declared)
        if size > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
        # Refused before a byte of it is read when it cannot fit; counted as it arrives.
        if budget is not None and budget.body_bytes + size > budget.max_body_bytes:
            raise _over_budget()
    encoding = headers.content_encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return await _read_counted(receive, limit, budget)
    wbits = _DECODERS.get(encoding.decode("latin-1"))
    if wbits is None:
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding.decode('latin-1')!r:.40}")
    cap = limit if decompressed_limit is None else min(limit, decompressed_limit)
    return await _read_decompressed(receive, limit, cap, wbits, budget)


def _over_budget() -> Unavailable:
    return Unavailable("too many request body bytes in flight; retry later")


async def _chunks(receive: Receive) -> tuple[bytes, bool]:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return message.get("body", b""), message.get("more_body", False)


async def _read_counted(receive: Receive, limit: int, budget: Lifecycle | None) -> bytes:
    chunk, more = await _chunks(receive)
    if not more:  # the common case: the whole body in one message
        if budget is not None:  # take_body, inlined: this is every small request's path
            held = budget.body_bytes + len(chunk)
            if held > budget.max_body_bytes:
                raise _over_budget()
            budget.body_bytes = held
        return chunk
    parts, total = [chunk], len(chunk)
    try:
        if budget is not None and not budget.take_body(len(chunk)):
            total = 0
            raise _over_budget()
        while more:
            chunk, more = await _chunks(receive)
            if total + len(chunk) > limit:
                raise PayloadTooLarge(f"request body over the {limit} byte limit")
            if budget is not None and not budget.take_body(len(chunk)):
                raise _over_budget()
            total += len(chunk)
            parts.append(chunk)
    except BaseException:
        if budget is not None:
            budget.release_body(total)
        raise
    return b"".join(parts)


async def _read_decompressed(receive: Receive, limit: int, cap: int, wbits: int, budget: Lifecycle | None) -> bytes:
    """Inflate as it arrives: the wire bytes count against ``limit``, the inflated ones ``cap``."""
    decoder = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    wire = total = 0
    more = True
    try:
        while more:
            data, more = await _chunks(receive)
            wire += len(data)
            if wire > limit:
                raise PayloadTooLarge(f"request body over the {limit} byte limit")
            # max_length bounds each step, so a small bomb never inflates past the cap in memory.
            while data:
                if decoder.eof:
                    # Checked before zlib sees them: it would append every later chunk to
                    # unused_data, a copy of all so far each time (quadratic in the junk).
                    raise BadRequest("data after the end of the compressed request body")
                out = decoder.decompress(data, cap - total + 1)
                if total + len(out) > cap:
                    raise PayloadTooLarge(f"decompressed request body over the {cap} byte limit")
                if budget is not None and not budget.take_body(len(out)):
                    raise _over_budget()
                total += len(out)
                parts.append(out)
                data = decoder.unconsumed_tail
                if decoder.unused_data:
                    raise BadRequest("data after the end of the compressed request body")
        if not decoder.eof:
            raise BadRequest("compressed request body is truncated")
    except zlib.error:
        if budget is not None:
            budget.release_body(total)
        raise BadRequest("request body is not valid compressed data") from None
    except BaseException:
        if budget is not None:
            budget.release_body(total)
        raise
    return b"".join(parts)
