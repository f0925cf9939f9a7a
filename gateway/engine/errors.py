"""Errors across the engine hop: an exception becomes a kind and a message, and back again."""

from __future__ import annotations

from typing import Any

from gateway.errors import ClientDisconnected, DeadlineExceeded, GatewayError, InternalError, Unavailable
from runtimes.base import InferenceFailedError, InvalidInputError, RuntimeLoadError


def error_reply(request_id: int, exc: BaseException) -> dict[str, Any]:
    """The header that answers request ``request_id`` with ``exc``."""
    if isinstance(exc, InvalidInputError):
        kind, message = "invalid", str(exc)
    elif isinstance(exc, InferenceFailedError):
        kind, message = "failed", str(exc)
    elif isinstance(exc, Unavailable):
        kind, message = "unavailable", exc.message
    elif isinstance(exc, DeadlineExceeded):
        kind, message = "deadline", exc.message
    elif isinstance(exc, ClientDisconnected):
        kind, message = "gone", "the client went away"
    elif isinstance(exc, RuntimeLoadError):
        kind, message = "load", str(exc)
        return {"id": request_id, "ok": False, "kind": kind, "error": message, "reason": exc.reason}
    elif isinstance(exc, GatewayError):
        kind, message = "unavailable" if exc.status >= 500 else "invalid", exc.message
    else:
        kind, message = "internal", "inference failed"
    return {"id": request_id, "ok": False, "kind": kind, "error": message}


def raise_error(header: dict[str, Any]) -> None:
    """Raise what an error reply says, as the worker's inference path expects it."""
    kind, message = header.get("kind"), str(header.get("error", "the engine failed"))
    if kind == "invalid":
        raise InvalidInputError(message)
    if kind == "failed":
        raise InferenceFailedError(message)
    if kind == "unavailable":
        raise Unavailable(message)
    if kind == "deadline":
        raise DeadlineExceeded(message)
    if kind == "gone":
        raise ClientDisconnected()
    if kind == "load":
        raise RuntimeLoadError(message, str(header.get("reason") or "invalid_model"))
    raise InternalError("inference failed")
