"""gRPC health and metadata calls: liveness, readiness, server and model metadata, config, statistics."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb

from gateway import metadata
from gateway.api_grpc.calls import CallBase
from gateway.errors import GatewayError, Unavailable
from gateway.models import Model, ModelVersion, VersionState, no_servable_version
from gateway.registry.names import parse_version
from gateway.telemetry.statistics import stats_entries, stats_versions


class HealthCalls(CallBase):
    """``ServerLive`` .. ``ModelStatistics``: what ``GET /v2/...`` answers over REST."""

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
            core = self.core
            versions = stats_versions(core.manager, request.name or None, request.version or None)
            response = pb.ModelStatisticsResponse()
            for entry in await stats_entries(core, versions):  # the whole host's on a multi-process host
                json_format.ParseDict(entry, response.model_stats.add(), ignore_unknown_fields=True)
            return response

        return await self._call(context, work)
