"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC, as Triton serves it.

Each call decodes its message, calls the same core the REST endpoints call (the inference
service, the model manager, the release controller) and encodes the answer. Errors are the
core's GatewayErrors, mapped to gRPC status codes as Triton maps its own (``status_code``);
anything else is logged and answered INTERNAL with a generic message, never a traceback.

The servicer is one class, as grpc wants, assembled from its groups of calls: health and
metadata (health.py), the repository extension (repository.py) and inference (here).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from gateway.api.dispatch import CLIENT_CLOSED, InferenceDispatcher
from gateway.api_grpc.calls import Overloaded, abort, call_metadata, status_code
from gateway.api_grpc.codec import infer_response as encode_infer_response
from gateway.api_grpc.codec import request_body
from gateway.api_grpc.health import HealthCalls
from gateway.api_grpc.repository import RepositoryCalls
from gateway.core import Core, CoreSlot
from gateway.errors import BadRequest, ClientDisconnected, GatewayError, InternalError, Unavailable
from gateway.exchange import Exchange, RequestIds
from gateway.lifecycle import Lifecycle
from gateway.predlog.writer import PredictionLog
from gateway.protocol.codec import MAX_ID_LENGTH
from gateway.telemetry.requests import RequestMetrics

__all__ = ["GrpcClient", "GrpcInference", "status_code"]

log = logging.getLogger(__name__)

#: ``time_remaining()`` past this is no deadline at all (grpc reports "infinite" as a huge number).
_NO_DEADLINE_S = 365 * 24 * 3600.0


class GrpcClient:
    """A call's client for the inference service: its metadata, and whether it has gone."""

    __slots__ = ("_context", "_metadata")

    def __init__(self, context: Any, metadata: dict[str, str]) -> None:
        self._context = context
        self._metadata = metadata

    def header(self, name: str) -> str | None:
        """The call's metadata value for ``name`` (lower case), or None."""
        return self._metadata.get(name)

    def gone(self) -> bool | None:
        """Whether the client cancelled the call (grpc knows at once)."""
        return bool(self._context.cancelled())

    async def wait_gone(self) -> None:
        """Return once the call has ended (grpc also cancels the handler, so this rarely runs)."""
        done = asyncio.Event()
        self._context.add_done_callback(lambda _: done.set())
        await done.wait()


class GrpcInference(HealthCalls, RepositoryCalls, service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The servicer; it serves from the core in ``slot`` once the app's lifespan has set it."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        slot: CoreSlot,
        metrics: RequestMetrics,
        ids: RequestIds,
        *,
        strict_readiness: bool = True,
    ) -> None:
        super().__init__(lifecycle, slot, strict_readiness=strict_readiness)
        self._metrics = metrics
        self._ids = ids

    # -- inference -----------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """One inference, with the REST dispatcher's policies: drain, limits, ids, metrics, log."""
        metadata_ = call_metadata(context)
        response, error, request_id = await self._serve(request, context, metadata_, stream=False)
        if error is not None:
            await abort(context, error, request_id)
        return response

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Independent requests on one stream, served concurrently, answered as each finishes.

        As Triton's: every request gets one response, matched by its ``id``; a request that
        fails gets ``error_message`` and the stream goes on. One stream skips grpc's per-call
        setup: a request costs about a third less than a unary call (docs/benchmarks.md).
        """
        metadata_ = call_metadata(context)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            response, error, _ = await self._serve(request, context, metadata_, stream=True)
            if error is None:
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
            else:
                failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                answers.put_nowait(pb.ModelStreamInferResponse(error_message=error.message, infer_response=failed))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.wait(set(tasks))
            finally:
                # Every request answered, or the request stream broke (a message that does not
                # parse aborts the call): end the stream, so the handler returns its RPC slot.
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # its errors (a broken request stream) end the call
        finally:
            # The call ended (done, cancelled or failed): what is still running has nobody to answer.
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _serve(
        self, request: Any, context: Any, metadata_: dict[str, str], *, stream: bool
    ) -> tuple[Any, GatewayError | None, str]:
        """Run one request through the transport's policies: (response, None, id) or (None, error, id)."""
        started = perf_counter()
        given = None if stream else metadata_.get("x-request-id")  # a stream's requests have their own ids
        exchange = Exchange(given if given is not None else self._ids.next())
        life = self._lifecycle
        core = self._core
        predlog = core.predlog if core is not None else None
        held = False
        error: GatewayError | None = None
        response = None
        try:
            if life.draining:
                raise Unavailable("the server is shutting down")
            if life.inflight >= life.max_inflight:  # REST and gRPC together: max_concurrent_requests
                raise Overloaded("too many requests in flight; retry later")
            if core is None:
                raise Unavailable("the server is starting")
            if given is not None and len(given) > MAX_ID_LENGTH:
                raise BadRequest(f"x-request-id is longer than {MAX_ID_LENGTH} characters")
            size = request.ByteSize()
            if not life.take_body(size):
                raise Unavailable("too many request bytes in flight; retry later")
            life.inflight += 1
            try:
                held = predlog is not None and not predlog.blocking
                if predlog is not None and predlog.blocking:
                    await predlog.reserve()  # audit-grade: no room in the log, no inference
                    held = True
                response = await self._infer(
                    core, request, context, metadata_, given=given, exchange=exchange, stream=stream
                )
            finally:
                life.inflight -= 1
                life.release_body(size)
            exchange.status = 200
        except GatewayError as exc:
            exchange.status = exc.status
            error = exc
        except (ClientDisconnected, asyncio.CancelledError):
            exchange.status = CLIENT_CLOSED  # nobody to answer
            self._finish(predlog, held, exchange, started)
            raise
        except Exception:
            log.exception("unhandled error in ModelInfer for model %r", request.model_name)
            exchange.status = 500
            error = InternalError("internal error")
        self._finish(predlog, held, exchange, started)
        return response, error, exchange.request_id

    async def _infer(
        self, core: Core, request: Any, context: Any, metadata_: dict[str, str], *, given: str | None,
        exchange: Exchange, stream: bool,
    ) -> Any:  # fmt: skip
        remaining = context.time_remaining()
        timeout_us = None if remaining is None or remaining > _NO_DEADLINE_S else max(1, int(remaining * 1e6))
        body, header_length = request_body(request, timeout_us)
        result = await core.service.infer(
            request.model_name,
            request.model_version or None,
            body,
            header_length,
            given,
            client=GrpcClient(context, metadata_),
            exchange=exchange,
        )
        if not stream:  # a stream's trailing metadata would come once, at its end
            trailing = [("x-model-version", result.model_version)]
            rid = result.request_id if result.request_id is not None else exchange.request_id
            if rid.isascii() and rid.isprintable():
                trailing.append(("x-request-id", rid))
            context.set_trailing_metadata(tuple(trailing))
        response = encode_infer_response(result.body, result.header_length)
        if result.after is not None:
            # Queued now: they run once the answer is on its way.
            result.after()
        return response

    def _finish(self, predlog: PredictionLog | None, held: bool, exchange: Exchange, started: float) -> None:
        """Count the call and hand it to the prediction log, as the REST dispatcher does."""
        elapsed = perf_counter() - started
        if predlog is not None and held:
            InferenceDispatcher._log(predlog, exchange, elapsed)
        self._metrics.record(exchange, elapsed)

    # -- what this server does not do ----------------------------------------------------------

    async def _unsupported(self, request: Any, context: Any) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "shared memory, tracing and log settings are not supported")
        raise AssertionError  # abort raises

    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _unsupported
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _unsupported
    TraceSetting = LogSettings = _unsupported
