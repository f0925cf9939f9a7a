"""What every gRPC call shares: the core it serves from, status codes, metadata and aborts.

``GrpcInference`` (service.py) is one servicer class, as grpc wants; its calls are grouped
in mixins on this base: health and metadata (health.py), the repository extension
(repository.py) and inference (service.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]

from gateway.api.dispatch import CLIENT_CLOSED
from gateway.core import Core, CoreSlot
from gateway.errors import GatewayError
from gateway.lifecycle import Lifecycle

log = logging.getLogger(__name__)

#: A gateway status (HTTP's numbers) as the gRPC status Triton answers for the same case.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CLIENT_CLOSED: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(status: int) -> Any:
    """The gRPC status code for a gateway status (HTTP's numbers); 200 is OK."""
    if status == 200:
        return grpc.StatusCode.OK
    return _CODES.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT)


def call_metadata(context: Any) -> dict[str, str]:
    """The call's metadata as a dict (keys are lower case on the wire; text values only)."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


class CallBase:
    """The servicer's state every group of calls reads: the core in ``slot``, set by the app's lifespan."""

    def __init__(self, lifecycle: Lifecycle, slot: CoreSlot, *, strict_readiness: bool = True) -> None:
        self._lifecycle = lifecycle
        self._strict_readiness = strict_readiness
        self._slot = slot

    @property
    def _core(self) -> Core | None:
        """The core, or None before start-up and after shutdown."""
        return self._slot.current

    @property
    def core(self) -> Core:
        """The core; UNAVAILABLE before the lifespan has built it."""
        return self._slot.core

    async def _call(self, context: Any, work: Callable[[], Any]) -> Any:
        """Run a non-inference call's body, its errors answered as gRPC statuses."""
        try:
            return await work()
        except GatewayError as exc:
            await abort(context, exc)
        except Exception:
            log.exception("unhandled error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class Unauthenticated(GatewayError):
    """A repository call without the admin token."""

    status = 401


class Overloaded(GatewayError):
    """Past max_concurrent_requests: RESOURCE_EXHAUSTED, as grpc's own servers answer their cap."""

    status = 429


async def abort(context: Any, exc: GatewayError, request_id: str | None = None) -> NoReturn:
    """End the call with the error's gRPC status and message (and the request id, when printable)."""
    trailing = []
    retry = exc.headers.get("Retry-After")
    if retry is not None:
        trailing.append(("retry-after", retry))
    if request_id is not None and request_id.isascii() and request_id.isprintable():
        trailing.append(("x-request-id", request_id))
    if trailing:
        context.set_trailing_metadata(tuple(trailing))
    await context.abort(status_code(exc.status), exc.message)
    raise AssertionError  # abort raises
