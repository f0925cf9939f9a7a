"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC, as Triton serves it.

Each call decodes its message, calls the same core the REST endpoints call (the inference
service, the model manager, the release controller) and encodes the answer. Errors are the
core's GatewayErrors, mapped to gRPC status codes as Triton maps its own (``status_code``);
anything else is logged and answered INTERNAL with a generic message, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from gateway import metadata
from gateway.api.dispatch import CLIENT_CLOSED, InferenceDispatcher
from gateway.api_grpc.codec import infer_response as encode_infer_response
from gateway.api_grpc.codec import parameter_value, request_body
from gateway.auth import BearerAuth
from gateway.errors import BadRequest, ClientDisconnected, GatewayError, InternalError, Unavailable
from gateway.exchange import Exchange, RequestIds
from gateway.inference import InferenceService
from gateway.lifecycle import Lifecycle
from gateway.models import Model, ModelManager, ModelVersion, VersionState, no_servable_version
from gateway.predlog.writer import PredictionLog
from gateway.protocol.codec import MAX_ID_LENGTH
from gateway.registry.names import check_model_name, parse_version
from gateway.release.controller import ReleaseController
from gateway.telemetry.requests import RequestMetrics

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
#: ``time_remaining()`` past this is no deadline at all (grpc reports "infinite" as a huge number).
_NO_DEADLINE_S = 365 * 24 * 3600.0


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


def _metadata(context: Any) -> dict[str, str]:
    """The call's metadata as a dict (keys are lower case on the wire; text values only)."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


class GrpcInference(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The servicer; ``attach`` gives it the core once the app's lifespan has built it."""

    def __init__(
        self, lifecycle: Lifecycle, metrics: RequestMetrics, ids: RequestIds, *, strict_readiness: bool = True
    ) -> None:
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._ids = ids
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

    # -- error handling ------------------------------------------------------------------------

    async def _call(self, context: Any, work: Callable[[], Any]) -> Any:
        """Run a non-inference call's body, its errors answered as gRPC statuses."""
        try:
            return await work()
        except GatewayError as exc:
            await _abort(context, exc)
        except Exception:
            log.exception("unhandled error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    # -- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        """Liveness: the process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        """Readiness, as ``GET /v2/health/ready`` decides it."""
        core = self._core
        ready = (
            not self._lifecycle.draining and core is not None and core.manager.not_ready(self._strict_readiness) is None
        )
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        """``GET /v2``."""
        doc = metadata.server_metadata()
        return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"], extensions=doc["extensions"])

    def _target(self, name: str, version_text: str) -> tuple[Model, ModelVersion]:
        manager = self.core.manager
        model = manager.model(name)
        if version_text:
            return model, manager.version(model, parse_version(version_text))
        if model.route is None:
            raise Unavailable(no_servable_version(model))
        return model, manager.version(model, model.route.primary)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        """Whether the model (or the named version) can serve; false for an unknown one, as Triton."""

        async def work() -> Any:
            try:
                _, mv = self._target(request.name, request.version)
            except GatewayError as exc:
                if exc.status in (404, 503):
                    return pb.ModelReadyResponse(ready=False)
                raise
            return pb.ModelReadyResponse(ready=mv.ready)

        return await self._call(context, work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        """``GET /v2/models/{m}[/versions/{v}]``."""

        async def work() -> Any:
            model, mv = self._target(request.name, request.version)
            doc = metadata.model_metadata(model, mv)
            response = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"])
            for tensor in doc["inputs"]:
                response.inputs.add(**tensor)
            for tensor in doc["outputs"]:
                response.outputs.add(**tensor)
            return response

        return await self._call(context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        """``GET /v2/models/{m}[/versions/{v}]/config``, as Triton's ModelConfig message."""

        async def work() -> Any:
            model, mv = self._target(request.name, request.version)
            if mv.state is not VersionState.READY:
                raise Unavailable(f"version {mv.version} of model {model.name!r} is {mv.state.value.lower()}")
            config = json_format.ParseDict(
                metadata.model_config(model, mv), model_config_pb2.ModelConfig(), ignore_unknown_fields=True
            )
            return pb.ModelConfigResponse(config=config)

        return await self._call(context, work)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        """Triton's statistics extension: every READY version, of one model or of all."""

        async def work() -> Any:
            manager = self.core.manager
            models = [manager.model(request.name)] if request.name else manager.models()
            response = pb.ModelStatisticsResponse()
            for model in models:
                if request.version:
                    versions = [manager.version(model, parse_version(request.version))]
                else:
                    versions = [model.versions[v] for v in sorted(model.versions)]
                for mv in versions:
                    if mv.state is VersionState.READY:
                        json_format.ParseDict(
                            mv.stats.to_triton(model.name, str(mv.version)),
                            response.model_stats.add(),
                            ignore_unknown_fields=True,
                        )
            return response

        return await self._call(context, work)

    # -- Triton's repository extension, behind the admin token ---------------------------------

    def _authorize(self, context: Any) -> tuple[CoreState, str]:
        """The core and the actor, if the call carries the admin token; else UNAUTHENTICATED."""
        core = self.core
        metadata_ = _metadata(context)
        header = metadata_.get("authorization")
        if not core.auth.allows(None if header is None else header.encode("latin-1", "replace")):
            raise _Unauthenticated("unauthorized")
        actor = metadata_.get("x-actor", "admin")
        if not actor or len(actor) > 256:
            raise BadRequest("x-actor must be 1 to 256 characters")
        return core, actor

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        """Every available model version and its state."""

        async def work() -> Any:
            core, _ = self._authorize(context)
            response = pb.RepositoryIndexResponse()
            for entry in core.controller.repository_index():
                response.models.add(**entry)
            return response

        return await self._call(context, work)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        """Load the versions the model's route names (else its highest); answers once READY."""

        async def work() -> Any:
            core, actor = self._authorize(context)
            _refuse_load_parameters({k: parameter_value(v) for k, v in request.parameters.items()})
            await core.controller.load_model(check_model_name(request.model_name), actor, None)
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, work)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        """Unload every loaded version that has no role in the route."""

        async def work() -> Any:
            core, actor = self._authorize(context)
            await core.controller.unload_idle(check_model_name(request.model_name), actor, None)
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, work)

    # -- inference -----------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """One inference, with the REST dispatcher's policies: drain, limits, ids, metrics, log."""
        metadata_ = _metadata(context)
        response, error, request_id = await self._serve(request, context, metadata_, stream=False)
        if error is not None:
            await _abort(context, error, request_id)
        return response

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Independent requests on one stream, served concurrently, answered as each finishes.

        As Triton's: every request gets one response, matched by its ``id``; a request that
        fails gets ``error_message`` and the stream goes on. One stream skips grpc's per-call
        setup: a request costs about a third less than a unary call (docs/benchmarks.md).
        """
        metadata_ = _metadata(context)
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
            async for request in request_iterator:
                task = asyncio.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(set(tasks))
            answers.put_nowait(None)  # every request answered: end the stream

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
                raise _Overloaded("too many requests in flight; retry later")
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
        self, core: CoreState, request: Any, context: Any, metadata_: dict[str, str], *, given: str | None,
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


class _Unauthenticated(GatewayError):
    status = 401


class _Overloaded(GatewayError):
    """Past max_concurrent_requests: RESOURCE_EXHAUSTED, as grpc's own servers answer their cap."""

    status = 429


async def _abort(context: Any, exc: GatewayError, request_id: str | None = None) -> NoReturn:
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


def _refuse_load_parameters(parameters: dict[str, Any]) -> None:
    """Triton's load-time overrides (a config, uploaded files) are refused, as over REST."""
    if "config" in parameters:
        raise BadRequest(
            "parameters.config is not supported: tensorgate loads a model's configuration from its "
            "repository (config.toml) and does not override it per load; nothing was loaded"
        )
    files = sorted(key for key in parameters if key.startswith("file:"))
    if files:
        raise BadRequest(
            f"model file uploads ({files[0][:100]!r}) are not supported: tensorgate never writes to its "
            "repository; put the files in the repository, then load; nothing was loaded"
        )
    if parameters:
        raise BadRequest(f"unknown load parameter {sorted(parameters)[0][:100]!r}; nothing was loaded")
