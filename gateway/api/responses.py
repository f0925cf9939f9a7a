"""JSON responses with orjson, and the one place where errors become HTTP."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

JSON = "application/json"
_JSON_HEADER = (b"content-type", JSON.encode())
#: Starlette's routing errors, in our words.
_HTTP_MESSAGES = {404: "not found", 405: "method not allowed"}


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error answer ready to send: status, raw headers (content-type and -length first) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> ErrorReply:
    """The V2 error answer ``{"error": message}``: the only place its bytes are made."""
    body = orjson.dumps({"error": message})
    raw = [_JSON_HEADER, (b"content-length", b"%d" % len(body))]
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    return ErrorReply(status, raw, body)


def reply_for(exc: BaseException) -> ErrorReply:
    """The answer to an exception: ours carry their status; Starlette's 404/405; anything else a bare 500."""
    if isinstance(exc, GatewayError):
        return error_reply(exc.status, exc.message, exc.headers)
    if isinstance(exc, HTTPException):
        message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
        return error_reply(exc.status_code, message, exc.headers)
    return error_reply(500, "internal error")  # our bug: the client learns nothing about it


async def send_reply(send: Send, reply: ErrorReply) -> None:
    """Send an error answer over ASGI (the dispatcher and the middlewares in front of Starlette)."""
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    await send({"type": "http.response.body", "body": reply.body})


async def send_error(send: Send, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
    """Send a complete ``{"error": message}`` response over ASGI."""
    await send_reply(send, error_reply(status, message, headers))


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(content), status, headers, media_type=JSON)


def starlette_reply(reply: ErrorReply) -> Response:
    """An error answer as a Starlette response (handlers and routes behind Starlette)."""
    response = Response(reply.body, reply.status)
    response.raw_headers = list(reply.headers)
    return response


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The V2 error body ``{"error": "..."}`` as a Starlette response."""
    return starlette_reply(error_reply(status, message, headers))


async def handle_error(request: Request, exc: Exception) -> Response:
    """Starlette's exception handler for every error: ours, its routing errors, and our bugs (logged)."""
    if not isinstance(exc, GatewayError | HTTPException):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return starlette_reply(reply_for(exc))
