"""JSON responses with orjson, and the one place where errors become HTTP."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(content), status, headers, media_type=JSON)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The V2 error body: ``{"error": "..."}``."""
    return json_response({"error": message}, status, headers)


async def gateway_error(request: Request, exc: Exception) -> Response:
    """Our own errors: their status, message and headers."""
    assert isinstance(exc, GatewayError)
    return error_response(exc.status, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (404, 405) in the V2 shape."""
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message, dict(exc.headers or {}))


async def internal_error(request: Request, exc: Exception) -> Response:
    """Anything else is our bug: log it, and tell the client nothing about it."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")
