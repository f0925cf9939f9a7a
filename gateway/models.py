"""The model catalogue: which models and versions this server holds, and the lookups on them.

Building versions is the ``VersionLoader``'s job (gateway/loader.py), deciding which version
serves a request the router's (routing/router.py), and readiness the policy's
(gateway/readiness.py); the manager holds the catalogue and answers lookups.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gateway.batching.cpu import never_busy
from gateway.config_error import ConfigError
from gateway.errors import NotFound, Unavailable, unknown_model, unknown_version
from gateway.loader import RemoteLoader, RuntimeLoader, VersionLoader
from gateway.readiness import model_ready, not_ready
from gateway.registry.base import Registry, RegistryError
from gateway.registry.config import ModelConfig
from gateway.registry.names import check_model_name
from gateway.versions import Model, ModelVersion, VersionState, no_servable_version
from routing.route import Route

if TYPE_CHECKING:
    from gateway.engine.placement import Engines

__all__ = ["Model", "ModelManager", "ModelVersion", "VersionState", "no_servable_version"]

log = logging.getLogger(__name__)


class ModelManager:
    """The catalogue of models and versions: start-up, discovery, unload, and lookups."""

    def __init__(
        self,
        registry: Registry,
        loader: RuntimeLoader,
        *,
        rng: random.Random,
        saved_routes: Mapping[str, Route] | None = None,
        remote_loader: RemoteLoader | None = None,
        engines: Engines | None = None,
        busy: Callable[[], bool] = never_busy,
        unloaded: Mapping[str, set[int]] | None = None,
    ) -> None:
        self.registry = registry
        self._saved_routes = dict(saved_routes or {})
        #: A fleet's replica: versions the fleet unloaded, not loaded at start unless a saved route names them.
        self._unloaded = dict(unloaded or {})
        self._models: dict[str, Model] = {}
        self._startup: asyncio.Task[None] | None = None
        self.started = False
        #: A worker's clients of its host's engines (the lifespan starts and closes them); None alone.
        self.engines = engines
        self.loader = VersionLoader(
            registry, loader, rng=rng, current=self._current, remote_loader=remote_loader, engines=engines, busy=busy
        )
        #: (model, reason) -> failed loads, for ``tensorgate_model_load_failures_total``.
        self.load_failures = self.loader.load_failures
        #: (model, version) -> warm-ups on synthetic data that failed (the version serves anyway).
        self.warmup_failures = self.loader.warmup_failures

    def _current(self, mv: ModelVersion) -> bool:
        """Whether ``mv`` is still the catalogue's entry for its version (not unloaded or replaced)."""
        model = self._models.get(mv.model)
        return model is not None and model.versions.get(mv.version) is mv

    # -- start-up and shutdown ---------------------------------------------------------------

    def start(self) -> None:
        """Begin loading each model's highest version in the background."""
        self._startup = asyncio.create_task(self._load_initial(), name="initial-model-load")

    async def wait_started(self) -> None:
        """Wait for the initial loads to finish (successfully or not)."""
        if self._startup is not None:
            await asyncio.shield(self._startup)

    async def _load_initial(self) -> None:
        names = await asyncio.to_thread(self.registry.models)
        for name in names:
            model = await asyncio.to_thread(self._discover, name)
            if model is None:
                continue
            self._models[name] = model
            if model.config_error is not None:
                continue
            saved = self._saved_routes.get(name)
            primary = model.available[-1] if saved is not None else await asyncio.to_thread(self._default, model)
            model.route = saved or Route.latest(primary)
            # A saved route's versions, plus what the version_policy loads besides: with "all", every
            # version stays pinnable after a restart, as config.toml promises.
            versions = set(self._initial_versions(model, model.route.primary)) - self._unloaded.get(name, set())
            if saved is not None:
                versions |= set(saved.versions)
            for version in sorted(versions, reverse=True):
                if version in model.available:
                    await self.load(name, version, retry_remote=True)
                else:
                    log.error("model %r: the saved route names version %d, not in the repository", name, version)
        self.started = True
        ready = sum(1 for m in self._models.values() if model_ready(m))
        log.info("initial load done: %d of %d models ready", ready, len(self._models))

    def _default(self, model: Model) -> int:
        """The version that serves first: the registry's choice (a followed alias), else the highest."""
        try:
            chosen = self.registry.default_version(model.name)
        except RegistryError as exc:
            log.warning("model %r: %s; serving the highest version", model.name, exc)
            chosen = None
        return chosen if chosen in model.available else model.available[-1]

    @staticmethod
    def _initial_versions(model: Model, primary: int) -> list[int]:
        """The versions the model's ``version_policy`` loads at start-up (and ``primary``), highest first."""
        policy = model.config.version_policy
        if policy == "latest":
            return [primary]
        if policy == "all":
            return sorted(model.available, reverse=True)
        wanted = set(policy)
        missing = wanted.difference(model.available)
        if missing:
            log.warning("model %r: version_policy names missing versions %s", model.name, sorted(missing))
        # The route's version is always loaded, whatever the policy lists.
        return sorted(wanted.intersection(model.available) | {primary}, reverse=True)

    async def discover(self, name: str) -> Model:
        """The model called ``name``, looking in the registry again (new models and versions)."""
        check_model_name(name)
        model = self._models.get(name)
        versions = await asyncio.to_thread(self.registry.versions, name)
        if model is not None:
            model.available = versions or model.available
            return model
        found = await asyncio.to_thread(self._discover, name)
        if found is None:
            raise NotFound(f"model {name!r} not found in the repository")
        if found.config_error is None:
            found.route = Route.latest(found.available[-1])
        self._models[name] = found
        return found

    def set_route(self, model: Model, route: Route) -> None:
        """Replace the model's route: one reference swap, so requests see old or new, never a mix."""
        model.route = route

    async def unload(self, model: Model, version: int) -> None:
        """Take ``version`` out of service: refuse new requests, drain in-flight ones, release it."""
        mv = model.versions.get(version)
        if mv is None:
            raise NotFound(f"version {version} of model {model.name!r} is not loaded")
        mv.state = VersionState.UNLOADING  # new requests get 503 from here on
        await self.loader.stop_retrying(mv)  # a remote version still waiting for its model: stop asking
        if mv.batcher is not None:
            await mv.batcher.drain()  # queued and running batches finish first
        await self.loader.release(mv)
        if model.versions.get(version) is mv:
            del model.versions[version]
        log.info("model %r version %d unloaded", model.name, version)

    def _discover(self, name: str) -> Model | None:
        versions = self.registry.versions(name)
        if not versions:
            log.warning("model %r has no complete version directory; skipped", name)
            return None
        try:
            config = self.registry.config(name)
        except ConfigError as exc:
            log.error("model %r not loaded: %s", name, exc)
            return Model(name, ModelConfig(), versions, config_error=str(exc))
        return Model(name, config, versions)

    async def close(self) -> None:
        """Stop loading, then drain and release every loaded version."""
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            await asyncio.gather(self._startup, return_exceptions=True)
        await self.loader.close()
        for model in self._models.values():
            for mv in model.versions.values():
                await self.loader.release(mv)

    # -- lookups -----------------------------------------------------------------------------

    def models(self) -> list[Model]:
        """Every model the manager knows, by name."""
        return [self._models[n] for n in sorted(self._models)]

    def model(self, name: str) -> Model:
        """The model called ``name``, else a 400 (invalid name) or 404."""
        model = self._models.get(name)
        if model is None:
            check_model_name(name)  # registered names are valid: only a miss needs the check
            if not self.started:
                raise Unavailable(f"model {name!r} is not loaded yet: the server is starting")
            raise unknown_model(name)
        return model

    async def load(self, name: str, version: int, *, retry_remote: bool = False) -> ModelVersion:
        """Load ``version`` of ``name`` (once, however many callers ask) and warm it up (see VersionLoader)."""
        return await self.loader.load(self._models[name], version, retry_remote=retry_remote)

    @staticmethod
    def model_ready(model: Model) -> bool:
        """Whether the model's route can serve: its primary version is READY."""
        return model_ready(model)

    def is_ready(self, strict: bool = True) -> bool:
        """Server readiness: start-up finished, and every version that has routed traffic is READY."""
        return self.not_ready(strict) is None

    def not_ready(self, strict: bool = True) -> str | None:
        """Why the server is not ready, or None when it is (the policy: gateway/readiness.py)."""
        return not_ready(self._models.values(), self.started, strict)

    def version(self, model: Model, version: int) -> ModelVersion:
        """A loaded version, whatever its state, else a 404."""
        mv = model.versions.get(version)
        if mv is None:
            raise unknown_version(model.name, version)
        return mv

    def servable(self, model: Model, version: int) -> ModelVersion:
        """The version the router chose, if it can serve now: else a 404 (not loaded) or 503 (not READY)."""
        mv = model.versions.get(version)
        if mv is None:
            raise unknown_version(model.name, version)
        if mv.state is not VersionState.READY:
            if mv.state is VersionState.FAILED:  # why is for operators (GET /admin/models), not clients
                raise Unavailable(
                    f"version {mv.version} of model {model.name!r} failed to load (reason in /admin/models)", 30
                )
            raise Unavailable(f"version {mv.version} of model {model.name!r} is {mv.state.value.lower()}")
        return mv
