"""A worker's versions placed in engines: loading them there, and following the engines' restarts.

When an engine goes down, every READY version this worker placed in it becomes LOADING, its
error saying the engine is restarting (``/admin/models``; readiness fails). When the engine
answers again (a new incarnation), each is loaded there again and becomes READY.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.engine.client import EngineClient
from gateway.engine.placement import Engines
from gateway.engine.remote import EngineBatcher, EngineRuntime, engine_cost
from gateway.registry.base import Artifact, Registry
from gateway.versions import ModelVersion, VersionState
from runtimes.base import RuntimeLoadError
from runtimes.executor import RemoteExecutor

log = logging.getLogger(__name__)

#: How long a load waits for an engine still starting (it loads nothing before it answers).
ENGINE_START_S = 60.0


class EngineVersions:
    """Loads versions in the engines for the worker's loader, and reloads them after a restart."""

    def __init__(self, engines: Engines, registry: Registry, current: Callable[[ModelVersion], bool]) -> None:
        self.engines = engines
        self._registry = registry
        self._current = current
        #: The versions placed in an engine, and the engine's client.
        self._placed: dict[ModelVersion, EngineClient] = {}
        self._reloads: set[asyncio.Task[None]] = set()
        for client in engines.clients.values():
            client.listeners.append(self)

    async def load(self, mv: ModelVersion, client: EngineClient) -> tuple[Artifact, RemoteExecutor]:
        """Have ``client``'s engine load ``mv``; the artifact and the executor that calls it there."""
        described = await client.load(mv.model, mv.version, ENGINE_START_S)
        try:
            artifact = await asyncio.to_thread(self._registry.fetch, mv.model, mv.version, True)
        except BaseException:  # failed or cancelled here: let go of what the engine loaded for us
            await self._let_go(mv, client)
            raise
        runtime = EngineRuntime(client, mv.model, mv.version, described)
        artifact = Artifact(
            mv.model, mv.version, artifact.directory, None, described.get("sha256"), described.get("provenance")
        )
        self._placed[mv] = client
        return artifact, RemoteExecutor(runtime, engine_cost(described))

    @staticmethod
    def batcher(mv: ModelVersion, executor: RemoteExecutor) -> EngineBatcher:
        """The batcher interface of a version that batches in the engine."""
        runtime = executor.runtime
        assert isinstance(runtime, EngineRuntime)
        name = f"model {mv.model!r} version {mv.version}"
        return EngineBatcher(runtime, priority_levels=mv.config.batching.priority_levels, name=name)

    def _held(self, client: EngineClient) -> list[ModelVersion]:
        held = []
        for mv, placed in list(self._placed.items()):
            runtime = mv.executor.runtime if mv.executor is not None else None
            if not isinstance(runtime, EngineRuntime) or runtime.closed or not self._current(mv):
                del self._placed[mv]  # unloaded or replaced meanwhile
            elif placed is client:
                held.append(mv)
        return held

    def engine_down(self, client: EngineClient, reason: str) -> None:
        """Mark the engine's versions not READY (requests get 503 until it is back)."""
        for mv in self._held(client):
            if mv.state is VersionState.READY:
                mv.state = VersionState.LOADING
                mv.error = f"{client.name} is restarting ({reason})"

    def engine_up(self, client: EngineClient) -> None:
        """Load the engine's versions again (a restarted engine holds nothing)."""
        running = {task.get_name() for task in self._reloads}
        for mv in self._held(client):
            name = f"reload-{mv.model}-{mv.version}"
            if mv.state is VersionState.LOADING and mv.error is not None and name not in running:
                task = asyncio.create_task(self._reload(mv, client), name=name)
                self._reloads.add(task)
                task.add_done_callback(self._reloads.discard)

    async def _reload(self, mv: ModelVersion, client: EngineClient) -> None:
        try:
            await client.load(mv.model, mv.version, ENGINE_START_S)
        except RuntimeLoadError as exc:
            # Refused by the new engine (not just down again, nor restarting over and over, which
            # its next incarnation's engine_up retries): the version fails.
            if client.up and exc.reason != "engine":
                mv.state, mv.error = VersionState.FAILED, f"reload in {client.name} failed: {exc}"
                log.error("model %r version %d: %s", mv.model, mv.version, mv.error)
            return
        except Exception as exc:  # down again: the next incarnation reloads it
            log.warning("model %r version %d: reload in %s failed: %s", mv.model, mv.version, client.name, exc)
            return
        if self._current(mv) and mv.state is VersionState.LOADING:
            mv.state, mv.error = VersionState.READY, None
            log.info("model %r version %d READY again in %s", mv.model, mv.version, client.name)
        elif not self._current(mv):  # unloaded or replaced while it reloaded: let go of it there
            await self._let_go(mv, client)

    async def _let_go(self, mv: ModelVersion, client: EngineClient) -> None:
        """Release the engine's hold on ``mv``, unless another entry of this worker uses it there
        (the engine counts holds per worker, not per load)."""
        if not any(
            other is not mv and other.model == mv.model and other.version == mv.version and self._current(other)
            for other in self._placed
        ):
            await client.unload(mv.model, mv.version)

    async def close(self) -> None:
        """Stop the reloads under way."""
        for task in list(self._reloads):
            task.cancel()
        await asyncio.gather(*self._reloads, return_exceptions=True)
