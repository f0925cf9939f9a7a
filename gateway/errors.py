"""Errors with an HTTP status: raised anywhere in the gateway, answered in one place.

The classes carry a status number but import nothing from the web framework, so the core can
raise them without knowing it is behind HTTP. Messages are shown to clients: they must never
hold paths, tracebacks or secrets.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: ``status`` and the client-facing ``message``; ``headers`` to add."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        #: The request's own id when it was read before the error (the body's ``id``).
        self.request_id: str | None = None


class BadRequest(GatewayError):
    """400: a malformed request or tensor."""

    status = 400


class NotFound(GatewayError):
    """404: unknown model, version or path."""

    status = 404


def unknown_model(name: str) -> NotFound:
    """404 for a model this server does not know, in Triton's words.

    Triton's clients and users' scripts test ``message.startswith("Request for unknown model")``
    (Triton's core, ``ModelRepositoryManager::GetModel``): the wording is part of the contract.
    """
    return NotFound(f"Request for unknown model: '{name}' is not found")


def unknown_version(name: str, version: int) -> NotFound:
    """404 for a version of a known model that is not loaded here, in Triton's words."""
    return NotFound(f"Request for unknown model: '{name}' version {version} is not found")


class Conflict(GatewayError):
    """409: an admin action that conflicts with the current state."""

    status = 409


class PayloadTooLarge(GatewayError):
    """413: the body is over the configured limit."""

    status = 413


class UnsupportedMediaType(GatewayError):
    """415: a content type or content encoding we do not read."""

    status = 415


class InternalError(GatewayError):
    """500: our fault; the message stays generic."""

    status = 500


class BadGateway(GatewayError):
    """502: a remote server that serves a model refused, dropped the connection or failed."""

    status = 502


class LoadFailed(GatewayError):
    """502: the registry or the runtime could not produce a READY version."""

    status = 502


class LoadTimedOut(LoadFailed):
    """504: a load failed because a slow remote or registry passed the gateway's deadline."""

    status = 504


class Unavailable(GatewayError):
    """503: not ready, loading or overloaded; always with ``Retry-After``."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)})


class StoreFailed(Unavailable):
    """503: an admin change could not be saved, so it was not applied."""


class DeadlineExceeded(GatewayError):
    """504: the request's deadline passed."""

    status = 504


class ClientDisconnected(Exception):
    """The client went away before its answer was ready: there is nobody to answer."""
