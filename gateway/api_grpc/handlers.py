"""The service's method handlers, with request parsing that answers INVALID_ARGUMENT on bytes that do not parse.

The generated ``add_GRPCInferenceServiceServicer_to_server`` parses each request with the
message's ``FromString``; bytes that do not parse then end the call with grpc's own UNKNOWN
status and the name of a Python exception class. Here the same handlers are taken as the
generated code builds them (it is handed a recorder in place of the server), their parser is
made to hand back a ``Malformed`` marker instead of raising, and the call answers the marker
with INVALID_ARGUMENT, the status of every other malformed request (docs/grpc.md).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2_grpc

SERVICE = "inference.GRPCInferenceService"


class Malformed:
    """What a request that did not parse becomes: why, for the INVALID_ARGUMENT answer."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _Recorder:
    """Stands in for the server: keeps the method handlers the generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the handlers are registered once, from ``add_registered_method_handlers``."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Keep the service's handlers, by method name."""
        self.handlers = dict(handlers)


def add_service(servicer: Any, server: Any) -> None:
    """Serve ``servicer`` as ``inference.GRPCInferenceService`` on ``server``, parsing leniently."""
    recorder = _Recorder()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, recorder)
    if not recorder.handlers:  # generated code older than grpcio 1.63 registers a generic handler only
        raise RuntimeError("tritonclient's generated gRPC code registered no method handlers: upgrade tritonclient")
    handlers = {name: _lenient(name, handler) for name, handler in recorder.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _lenient(name: str, handler: Any) -> Any:
    parse = handler.request_deserializer
    message_type = f"inference.{name}Request"

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, ValueError, TypeError):
            return Malformed(f"the request could not be parsed as {message_type}")

    if handler.request_streaming:
        return handler._replace(request_deserializer=deserialize, stream_stream=_checked_stream(handler.stream_stream))
    return handler._replace(request_deserializer=deserialize, unary_unary=_checked_unary(handler.unary_unary))


def _checked_unary(behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def call(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        answer = behaviour(request, context)  # the generated base's calls we do not serve are plain functions
        return await answer if inspect.isawaitable(answer) else answer

    return call


def _checked_stream(behaviour: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def parsed(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Malformed):  # the stream cannot go on past bytes it cannot frame
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            yield request

    async def call(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        # An async generator function itself: grpc.aio tells a streaming handler by its kind.
        async for response in behaviour(parsed(requests, context), context):
            yield response

    return call
