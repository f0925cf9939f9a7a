"""Triton's repository extension over gRPC (index, load, unload), behind the admin token."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2 as pb

from gateway.api_grpc.calls import CallBase, Unauthenticated, call_metadata
from gateway.api_grpc.codec import parameter_value
from gateway.core import Core
from gateway.errors import BadRequest
from gateway.registry.names import check_model_name
from gateway.release.overrides import refuse_load_overrides


class RepositoryCalls(CallBase):
    """``RepositoryIndex``, ``RepositoryModelLoad`` and ``RepositoryModelUnload``, as the admin API."""

    def _authorize(self, context: Any) -> tuple[Core, str]:
        """The core and the actor, if the call carries the admin token; else UNAUTHENTICATED."""
        core = self.core
        metadata_ = call_metadata(context)
        header = metadata_.get("authorization")
        if not core.auth.allows(None if header is None else header.encode("latin-1", "replace")):
            raise Unauthenticated("unauthorized")
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
            refuse_load_overrides({k: parameter_value(v) for k, v in request.parameters.items()})
            name = check_model_name(request.model_name)
            await core.controller.load_model(name, actor, None)
            if core.fleet is not None:  # a host's workers: answered once every worker applied it
                await core.fleet.settle(name, core.controller.seq(name))
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, work)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        """Unload every loaded version that has no role in the route."""

        async def work() -> Any:
            core, actor = self._authorize(context)
            name = check_model_name(request.model_name)
            await core.controller.unload_idle(name, actor, None)
            if core.fleet is not None:
                await core.fleet.settle(name, core.controller.seq(name))
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, work)
