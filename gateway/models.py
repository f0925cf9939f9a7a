"""The model manager: which versions are loaded, in what state, and which version serves."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.batching.batcher import Batcher
from gateway.batching.policy import ComputeTimes, DelayPolicy
from gateway.config_error import ConfigError
from gateway.errors import NotFound, Unavailable, unknown_model, unknown_version
from gateway.predlog.records import RecordMeta
from gateway.registry.base import Artifact, Registry, RegistryError
from gateway.registry.config import ModelConfig
from gateway.registry.names import check_model_name
from gateway.retry import RetryLoop
from gateway.stats import VersionStats
from gateway.warmup import warm_up_version
from routing.route import Route
from runtimes.base import ModelInfo, RemoteRuntime, Runtime, RuntimeLoadError, TensorSpec
from runtimes.executor import AnyExecutor, Executor, RemoteExecutor
from runtimes.warmup import CostModel

log = logging.getLogger(__name__)

#: Builds a runtime for a fetched version (blocking); injected so tests can count or fail loads.
RuntimeLoader = Callable[[Artifact, ModelConfig], Runtime]
#: Connects to a remote runtime for a version (``runtime = "triton"``), on the event loop.
RemoteLoader = Callable[[Artifact, ModelConfig], Awaitable[RemoteRuntime]]

#: A remote call's cost before any is observed: never inline, and batching learns the real one.
_REMOTE_COST = CostModel(base_s=1e-3, per_element_s=0.0, base_elements=1)


def _check_batchable(runtime: ModelInfo) -> None:
    """Batching concatenates along the first dimension: every input must leave it dynamic."""
    fixed = [spec.name for spec in runtime.inputs if not spec.shape or spec.shape[0] >= 0]
    if fixed:
        raise RuntimeLoadError(
            f"max_batch_size > 0 needs a dynamic first (batch) dimension, but {', '.join(fixed)} has none",
            reason="config",
        )


def _failure_reason(exc: Exception) -> str:
    """The ``reason`` label of a failed load."""
    if isinstance(exc, (RuntimeLoadError, RegistryError)):
        return exc.reason
    return "config"


def no_servable_version(model: Model) -> str:
    """A client's 503 message for a model without a route; the reason (a config error) stays in /admin."""
    why = "its configuration is invalid (reason in /admin/models)" if model.config_error else "not loaded"
    return f"model {model.name!r} has no servable version: {why}"


def _remote_not_ready_yet(mv: ModelVersion, exc: Exception) -> bool:
    """Whether a failed load of a remote version may succeed later (its server or model still starting)."""
    triton = mv.config.triton
    return (
        mv.config.runtime == "triton"
        and triton.load_retry_max_s > 0
        and isinstance(exc, RuntimeLoadError)
        and exc.reason in ("remote", "timeout")
    )


class VersionState(enum.StrEnum):
    """The lifecycle of a loaded version, as the admin API reports it."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(eq=False)
class ModelVersion:
    """One version of a model in memory (or failing to get there)."""

    model: str
    version: int
    config: ModelConfig
    state: VersionState = VersionState.LOADING
    artifact: Artifact | None = None
    executor: AnyExecutor | None = None
    #: Set when the model batches (``max_batch_size > 0``).
    batcher: Batcher | None = None
    stats: VersionStats = field(default_factory=VersionStats)
    error: str | None = None
    #: Why it failed to load (the ``reason`` label of ``tensorgate_model_load_failures_total``).
    failure: str | None = None
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    #: The input specs as one interned tuple: versions with the same inputs share the object.
    signature: tuple[TensorSpec, ...] = ()
    #: The version number as text, as metrics, logs and responses show it (made once).
    label: str = field(init=False)
    #: Name -> V2 datatype, for the prediction log.
    input_types: dict[str, str] = field(default_factory=dict)
    output_types: dict[str, str] = field(default_factory=dict)
    #: What the prediction log writes of this version besides the request (redaction, run id).
    record_meta: RecordMeta = field(init=False)

    def __post_init__(self) -> None:
        self.label = str(self.version)
        self.record_meta = RecordMeta(self.config.logging)

    @property
    def provider(self) -> str | None:
        """The execution provider in use once READY."""
        return self.executor.runtime.provider if self.executor else None

    @property
    def platform(self) -> str:
        """The Triton platform string."""
        return self.executor.runtime.platform if self.executor else "onnxruntime_onnx"

    @property
    def provenance(self) -> Mapping[str, Any] | None:
        """Where the loaded version came from (run id, source, ...), when the registry knows."""
        return self.artifact.provenance if self.artifact is not None else None

    @property
    def remote(self) -> RemoteRuntime | None:
        """The remote runtime that serves this version, if one does."""
        executor = self.executor
        return executor.runtime if isinstance(executor, RemoteExecutor) else None

    @property
    def ready(self) -> bool:
        """READY, and for a remote runtime, its model ready and its circuit not open."""
        remote = self.remote
        return self.state is VersionState.READY and (remote is None or remote.ready)


@dataclass(eq=False)
class Model:
    """A model: its configuration, its versions in memory and its route."""

    name: str
    config: ModelConfig
    available: list[int]
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    route: Route | None = None
    config_error: str | None = None


class ModelManager:
    """Loads versions from a registry onto runtimes and answers "which version serves this?"."""

    def __init__(
        self,
        registry: Registry,
        loader: RuntimeLoader,
        *,
        rng: random.Random,
        saved_routes: Mapping[str, Route] | None = None,
        remote_loader: RemoteLoader | None = None,
    ) -> None:
        self.registry = registry
        self._loader = loader
        self._remote_loader = remote_loader
        self._rng = rng
        self._saved_routes = dict(saved_routes or {})
        self._signatures: dict[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] = {}
        self._models: dict[str, Model] = {}
        self._loads: dict[tuple[str, int], asyncio.Task[ModelVersion]] = {}
        self._startup: asyncio.Task[None] | None = None
        self.started = False
        #: (model, reason) -> failed loads, for ``tensorgate_model_load_failures_total``.
        self.load_failures: dict[tuple[str, str], int] = {}
        #: Start-up loads of remote versions not ready yet, tried again in the background.
        self._retrying: dict[ModelVersion, RetryLoop] = {}
        #: (model, version) -> warm-ups on synthetic data that failed (the version serves anyway).
        self.warmup_failures: dict[tuple[str, str], int] = {}

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
            versions = set(self._initial_versions(model, model.route.primary))
            if saved is not None:
                versions |= set(saved.versions)
            for version in sorted(versions, reverse=True):
                if version in model.available:
                    await self.load(name, version, retry_remote=True)
                else:
                    log.error("model %r: the saved route names version %d, not in the repository", name, version)
        self.started = True
        ready = sum(1 for m in self._models.values() if self.model_ready(m))
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
        retry = self._retrying.pop(mv, None)
        if retry is not None:  # a remote version still waiting for its model: stop asking
            await retry.close()
        if mv.batcher is not None:
            await mv.batcher.drain()  # queued and running batches finish first
        await self._release(mv)
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
        for retry in list(self._retrying.values()):
            await retry.close()
        pending = [t for t in self._loads.values() if not t.done()]
        await asyncio.gather(*pending, return_exceptions=True)
        for model in self._models.values():
            for mv in model.versions.values():
                await self._release(mv)

    @staticmethod
    async def _release(mv: ModelVersion) -> None:
        """Stop the version's batcher and executor (in-flight calls finish) and free the model."""
        if mv.executor is not None:
            mv.state = VersionState.UNLOADING
        if mv.batcher is not None:
            await mv.batcher.close()
            mv.batcher = None
        if mv.executor is not None:
            await mv.executor.close()
            mv.executor = None

    # -- loading -----------------------------------------------------------------------------

    async def load(self, name: str, version: int, *, retry_remote: bool = False) -> ModelVersion:
        """Load ``version`` of ``name`` (once, however many callers ask) and warm it up.

        ``retry_remote`` (start-up): a remote version whose model is not ready yet stays LOADING
        and is tried again in the background until it is READY, fails for good, or is unloaded.
        A load of a version being retried makes the next attempt now and answers its outcome.
        """
        model = self._models[name]
        current = model.versions.get(version)
        if current is not None and current.state is VersionState.READY:
            return current
        retry = self._retrying.get(current) if current is not None else None
        if current is not None and retry is not None:
            await retry.now()
            return current
        key = (name, version)
        task = self._loads.get(key)
        if task is None or task.done():
            mv = ModelVersion(name, version, model.config)
            model.versions[version] = mv
            task = asyncio.create_task(self._load(mv, retry_remote), name=f"load-{name}-{version}")
            self._loads[key] = task
            task.add_done_callback(lambda t: self._loads.pop(key, None) if self._loads.get(key) is t else None)
        return await asyncio.shield(task)

    async def _load(self, mv: ModelVersion, retry_remote: bool = False) -> ModelVersion:
        started = time.perf_counter()
        executor: AnyExecutor
        try:
            # A version's own config.toml may say how it runs (a canary on another runtime).
            mv.config = await asyncio.to_thread(self.registry.version_config, mv.model, mv.version)
            if mv.config.runtime == "triton":
                artifact, executor = await self._load_remote(mv)
            else:
                artifact, runtime, cost = await asyncio.to_thread(self._load_blocking, mv)
                executor = Executor(
                    runtime,
                    concurrency=mv.config.instance_count,
                    inline_threshold_s=mv.config.inline_threshold_us / 1e6,
                    cost=cost,
                    name=f"{mv.model}-{mv.version}",
                )
        except (RegistryError, RuntimeLoadError, ConfigError) as exc:
            if retry_remote and _remote_not_ready_yet(mv, exc):
                self._retry_later(mv, exc)
                return mv
            mv.state, mv.error = VersionState.FAILED, str(exc)
            log.error("model %r version %d failed to load: %s", mv.model, mv.version, exc)
            self._load_failed(mv, _failure_reason(exc))
            return mv
        except Exception:  # a runtime bug must not kill the manager: the version fails
            mv.state, mv.error = VersionState.FAILED, "internal error while loading"
            log.exception("model %r version %d failed to load", mv.model, mv.version)
            self._load_failed(mv, "internal")
            return mv
        info = executor.runtime
        mv.artifact = artifact
        run_id = artifact.provenance.get("run_id") if artifact.provenance else None
        mv.record_meta = RecordMeta(mv.config.logging, str(run_id) if run_id else None)
        mv.inputs = {s.name: s for s in info.inputs}
        mv.signature = self._signatures.setdefault(info.inputs, info.inputs)
        mv.outputs = {s.name: s for s in info.outputs}
        mv.input_types = {s.name: s.datatype for s in info.inputs}
        mv.output_types = {s.name: s.datatype for s in info.outputs}
        mv.executor = executor
        if mv.config.max_batch_size > 0:
            mv.batcher = self._batcher(mv, executor, executor.cost)
            mv.batcher.start()
        mv.state = VersionState.READY
        if not executor.cost.measured:  # synthetic warm-up failed (logged): counted, not fatal
            key = (mv.model, mv.label)
            self.warmup_failures[key] = self.warmup_failures.get(key, 0) + 1
        if isinstance(executor, RemoteExecutor):
            detail = f"remote platform {info.platform}"
        else:
            digest = (artifact.sha256 or "")[:12]
            line = executor.cost
            timing = f"{line.base_s * 1e6:.1f} us per call at batch 1" if line.measured else "cost not measured yet"
            detail = f"sha256 {digest}, {timing}"
        elapsed_ms = (time.perf_counter() - started) * 1e3
        log.info(
            "model %r version %d READY on %s in %.0f ms (%s)", mv.model, mv.version, info.provider, elapsed_ms, detail
        )
        return mv

    async def _load_remote(self, mv: ModelVersion) -> tuple[Artifact, RemoteExecutor]:
        """Fetch the version's entry (no model file) and connect to the remote server that runs it."""
        if self._remote_loader is None:
            raise RuntimeLoadError("this server has no remote runtime configured", "config")
        artifact = await asyncio.to_thread(self.registry.fetch, mv.model, mv.version, True)
        runtime = await self._remote_loader(artifact, mv.config)
        if mv.config.max_batch_size > 0:
            try:
                _check_batchable(runtime)
            except RuntimeLoadError:
                await runtime.close()
                raise
        return artifact, RemoteExecutor(runtime, _REMOTE_COST)

    def _retry_later(self, mv: ModelVersion, exc: Exception) -> None:
        """Keep ``mv`` LOADING, with the reason in /admin/models, and try again in the background."""
        first = mv.error is None
        mv.error = str(exc)
        if mv in self._retrying:  # an attempt of the running loop: it pauses and tries again
            log.info("model %r version %d: still not ready remotely: %s", mv.model, mv.version, exc)
            return
        log.warning("model %r version %d: %s; retrying in the background", mv.model, mv.version, exc)
        if first:
            self._load_failed(mv, _failure_reason(exc))

        async def attempt() -> bool:
            model = self._models.get(mv.model)
            if model is None or model.versions.get(mv.version) is not mv or mv.state is not VersionState.LOADING:
                return True  # unloaded or replaced meanwhile
            loaded = await self._load(mv, retry_remote=True)
            if loaded.state is VersionState.READY:
                loaded.error = loaded.failure = None
                log.info("model %r version %d: the remote model is ready now", mv.model, mv.version)
            return loaded.state is not VersionState.LOADING

        def done() -> None:
            self._retrying.pop(mv, None)

        self._retrying[mv] = RetryLoop(
            attempt,
            max_pause_s=mv.config.triton.load_retry_max_s,
            rng=self._rng,
            name=f"retry-load-{mv.model}-{mv.version}",
            on_done=done,
        )
        self._retrying[mv].start()

    def _load_failed(self, mv: ModelVersion, reason: str) -> None:
        mv.failure = reason
        key = (mv.model, reason)
        self.load_failures[key] = self.load_failures.get(key, 0) + 1

    def _batcher(self, mv: ModelVersion, executor: AnyExecutor, cost: CostModel) -> Batcher:
        config = mv.config
        batching = config.batching
        elements_per_row = max(1, cost.base_elements)

        def failed(exc: BaseException) -> None:
            mv.state, mv.error = VersionState.FAILED, f"batcher stopped: {exc!r}"

        policy = DelayPolicy(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            delay_s=None if batching.max_queue_delay_ms == "auto" else batching.max_queue_delay_ms / 1e3,
            target_p99_s=batching.target_p99_ms / 1e3,
            # executor.cost, not cost: an unmeasured version's line is fitted from its first calls.
            compute=ComputeTimes(lambda rows: executor.cost.predict(rows * elements_per_row)),
        )
        return Batcher(
            executor,
            policy,
            mv.stats,
            name=f"model {mv.model!r} version {mv.version}",
            max_queue_size=batching.max_queue_size,
            priority_levels=batching.priority_levels,
            instance_count=config.instance_count,
            default_timeout_s=batching.timeout_ms / 1e3,
            on_failure=failed,
        )

    def _load_blocking(self, mv: ModelVersion) -> tuple[Artifact, Runtime, CostModel]:
        artifact = self.registry.fetch(mv.model, mv.version)
        runtime = self._loader(artifact, mv.config)
        try:
            if mv.config.max_batch_size > 0:
                _check_batchable(runtime)
            cost = warm_up_version(
                runtime, artifact.directory, model=mv.model, version=mv.version, max_batch_size=mv.config.max_batch_size
            )
        except RuntimeLoadError:
            runtime.close()
            raise
        except Exception as exc:
            runtime.close()
            raise RuntimeLoadError(f"warm-up failed: {exc}") from exc
        return artifact, runtime, cost

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

    @staticmethod
    def model_ready(model: Model) -> bool:
        """Whether the model's route can serve: its primary version is READY."""
        if model.route is None:
            return False
        mv = model.versions.get(model.route.primary)
        return mv is not None and mv.state is VersionState.READY

    def is_ready(self, strict: bool = True) -> bool:
        """Server readiness: start-up finished, and every version that has routed traffic is READY."""
        return self.not_ready(strict) is None

    def not_ready(self, strict: bool = True) -> str | None:
        """Why the server is not ready (naming the model and version at fault), or None when it is.

        Strict is Triton's default readiness: a pod whose routed version failed to load never
        becomes ready, so a rollout with a broken model stops instead of serving errors. Not
        strict: ready once every routed version of at least one model is READY, so one broken
        candidate does not take a pod that serves everything else out of its Service.
        """
        if not self.started:
            return "models are loading"
        faults: list[str] = []
        serving = 0
        for model in self._models.values():
            route = model.route
            if route is None:
                continue
            found = [self._routed_fault(model, v) for v, w in sorted(route.weights.items()) if w > 0]
            model_faults = [f for f in found if f is not None]
            faults += model_faults
            serving += not model_faults
        if strict:
            return "; ".join(faults) if faults else None
        if serving:
            return None
        return "no model can serve" + (f": {'; '.join(faults)}" if faults else "")

    @staticmethod
    def _routed_fault(model: Model, version: int) -> str | None:
        mv = model.versions.get(version)
        if mv is None:
            return f"routed version {version} of model {model.name!r} is not loaded"
        if mv.state is VersionState.READY:
            return None
        # The probe is public: the load error's text stays under /admin (issue 20, item 6).
        where = " (reason in /admin/models)" if mv.state is VersionState.FAILED else ""
        return f"routed version {version} of model {model.name!r} is {mv.state.value}{where}"

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
