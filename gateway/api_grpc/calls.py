"""What every gRPC call shares: the core it serves from, status codes, metadata and aborts.

``GrpcInference`` (service.py) is one servicer class, as grpc wants; its calls are grouped
in mixins on this base: health and metadata (health.py), the repository extension
(repository.py) and inference (service.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]

from gateway.api.dispatch import CLIENT_CLOSED
from gateway.auth import BearerAuth
from gateway.errors import GatewayError, Unavailable
from gateway.inference import InferenceService
from gateway.lifecycle import Lifecycle
from gateway.models import ModelManager
from gateway.predlog.writer import PredictionLog
from gateway.release.controller import ReleaseController

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


@dataclass(frozen=True, slots=True)
class CoreState:
    """What the app's lifespan builds and the gRPC calls use."""

    manager: ModelManager
    service: InferenceService
    controller: ReleaseController
    auth: BearerAuth
    predlog: PredictionLog | None


def call_metadata(context: Any) -> dict[str, str]:
    """The call's metadata as a dict (keys are lower case on the wire; text values only)."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


class CallBase:
    """The servicer's state every group of calls reads; ``attach`` gives it the core."""

    def __init__(self, lifecycle: Lifecycle, *, strict_readiness: bool = True) -> None:
        self._lifecycle = lifecycle
        self._strict_readiness = strict_readiness
        self._core: CoreState | None = None

    def attach(self, core: CoreState | None) -> None:
        """Called by the lifespan once the core exists (None again at shutdown)."""
        self._core = core

    @property
    def core(self) -> CoreState:
        """The core; UNAVAILABLE before the lifespan has built it."""
        if self._core is None:
            raise Unavailable("the server is starting")
        return self._core

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
