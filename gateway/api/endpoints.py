"""The Open Inference Protocol endpoints: HTTP in, gateway core, HTTP out."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import metadata
from gateway.api.body import BodyHeaders, read_body
from gateway.api.client import AsgiClient
from gateway.api.dispatch import echoable
from gateway.api.responses import error_response, json_response
from gateway.core import CoreSlot
from gateway.errors import BadRequest, Unavailable
from gateway.exchange import Exchange
from gateway.host.merge import Families
from gateway.lifecycle import Lifecycle
from gateway.models import Model, ModelManager, ModelVersion, VersionState, no_servable_version
from gateway.protocol.codec import MAX_ID_LENGTH
from gateway.registry.names import parse_version
from gateway.telemetry.statistics import stats_entries, stats_versions


class Endpoints:
    """Route handlers that serve from the core in ``slot`` (set by the app's lifespan)."""

    def __init__(
        self,
        slot: CoreSlot,
        max_body_bytes: int,
        lifecycle: Lifecycle,
        metrics: CollectorRegistry,
        *,
        strict_readiness: bool = True,
        max_decompressed_bytes: int | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        #: What a compressed inference body may inflate to (None: ``max_body_bytes``).
        self.max_decompressed_bytes = max_decompressed_bytes
        self.strict_readiness = strict_readiness
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._slot = slot

    @property
    def manager(self) -> ModelManager:
        """The model manager; 503 before the lifespan has built it."""
        return self._slot.core.manager

    # -- health and metadata -------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        """Liveness: the process answers."""
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        """Readiness: start-up done, every routed version READY, and no drain under way."""
        if self._lifecycle.draining:
            return error_response(503, "not ready: the server is shutting down", {"Retry-After": "1"})
        core = self._slot.current
        reason = "the server is starting" if core is None else core.manager.not_ready(self.strict_readiness)
        if reason is None:
            return json_response({"ready": True})
        return error_response(503, f"not ready: {reason}", {"Retry-After": "1"})

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text format (or OpenMetrics when the scraper asks for it)."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        core = self._slot.current
        host = core.host if core is not None else None
        if host is None:  # one process (or a worker still starting): its own registry
            return Response(encode(self._metrics), media_type=content_type)
        return Response(encode(Families(await host.metrics())), media_type=content_type)

    async def server_metadata(self, request: Request) -> Response:
        """``GET /v2``."""
        return json_response(metadata.server_metadata())

    def _target(self, request: Request) -> tuple[Model, ModelVersion]:
        params = request.path_params
        manager = self.manager
        model = manager.model(params["model"])
        text = params.get("version")
        if text is not None:
            return model, manager.version(model, parse_version(text))
        if model.route is None:
            raise Unavailable(no_servable_version(model))
        return model, manager.version(model, model.route.primary)

    async def model_metadata(self, request: Request) -> Response:
        """``GET /v2/models/{m}[/versions/{v}]``."""
        model, mv = self._target(request)
        return json_response(metadata.model_metadata(model, mv))

    async def model_config(self, request: Request) -> Response:
        """``GET /v2/models/{m}[/versions/{v}]/config`` (Triton's extension)."""
        model, mv = self._target(request)
        if mv.state is not VersionState.READY:
            raise Unavailable(f"version {mv.version} of model {model.name!r} is {mv.state.value.lower()}")
        return json_response(metadata.model_config(model, mv))

    async def model_ready(self, request: Request) -> Response:
        """``GET /v2/models/{m}[/versions/{v}]/ready``: 200 when it can serve, else 503."""
        model, mv = self._target(request)
        if mv.ready:
            return json_response({"name": model.name, "version": str(mv.version), "ready": True})
        # READY here but not ready: a remote runtime whose model is down or whose circuit is open.
        state = "not ready on its remote server" if mv.state is VersionState.READY else mv.state.value.lower()
        return error_response(503, f"version {mv.version} of model {model.name!r} is {state}", {"Retry-After": "1"})

    async def model_stats(self, request: Request) -> Response:
        """``GET /v2/models[/{m}[/versions/{v}]]/stats``: Triton's statistics extension."""
        core = self._slot.core
        params = request.path_params
        versions = stats_versions(core.manager, params.get("model"), params.get("version"))
        return json_response({"model_stats": await stats_entries(core, versions)})

    # -- inference -----------------------------------------------------------------------------

    async def infer(self, scope: Scope, receive: Receive, send: Send, headers: BodyHeaders, exchange: Exchange) -> None:
        """``POST /v2/models/{m}[/versions/{v}]/infer``: routed, or pinned when a version is named.

        A raw ASGI endpoint: this is the hot path, and Starlette's Request and Response objects
        cost a measurable share of a small model's request (docs/benchmarks.md). The dispatcher
        in front has parsed the headers and answers errors.
        """
        service = self._slot.core.service
        if headers.duplicated is not None:
            raise BadRequest("Inference-Header-Content-Length is given twice")
        headers.check_media_type()
        life = self._lifecycle
        body = await read_body(receive, headers, self.max_body_bytes, self.max_decompressed_bytes, life)
        try:  # the body's bytes count in flight until the answer is sent
            given = headers.request_id
            if given is not None and len(given) > MAX_ID_LENGTH:
                raise BadRequest(f"x-request-id is longer than {MAX_ID_LENGTH} characters")
            header_length = headers.header_length
            params = scope["path_params"]
            result = await service.infer(
                params["model"],
                params.get("version"),
                body,
                None if header_length is None else header_length.decode("latin-1"),
                None if given is None else exchange.request_id,
                client=AsgiClient(receive, scope["headers"]),
                exchange=exchange,
            )
            out = [
                (b"content-length", b"%d" % len(result.body)),
                (b"x-model-version", result.model_version.encode()),
            ]
            if result.header_length is None:
                out.append((b"content-type", b"application/json"))
            else:
                out.append((b"content-type", b"application/octet-stream"))
                out.append((b"inference-header-content-length", b"%d" % result.header_length))
            # The id may hold anything a header or JSON can; only printable ASCII goes back in a header.
            rid = result.request_id if result.request_id is not None else exchange.request_id
            if echoable(rid):
                out.append((b"x-request-id", rid.encode()))
            await send({"type": "http.response.start", "status": 200, "headers": out})
            await send({"type": "http.response.body", "body": result.body})
        finally:
            life.release_body(len(body))
        if result.after is not None:
            result.after()  # queue the shadow copies: the client has its answer already
