"""Building a version: fetch -> runtime -> warm-up -> executor -> batcher, once per version.

The ``VersionLoader`` owns everything about getting a version to READY (and back out): the
deduplicated load tasks, the background retries of remote versions still starting, the
failure counters, and the release of a version's batcher and executor.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.batching.batcher import Batcher
from gateway.batching.cpu import never_busy
from gateway.batching.policy import ComputeTimes, DelayPolicy
from gateway.config_error import ConfigError
from gateway.predlog.records import RecordMeta
from gateway.registry.base import Artifact, Registry, RegistryError
from gateway.registry.config import ModelConfig
from gateway.retry import RetryLoop
from gateway.versions import Model, ModelVersion, VersionState
from gateway.warmup import warm_up_version
from runtimes.base import ModelInfo, RemoteRuntime, Runtime, RuntimeLoadError, TensorSpec
from runtimes.devices import Devices
from runtimes.executor import AnyExecutor, Executor, RemoteExecutor
from runtimes.kinds import runtime_kind
from runtimes.warmup import CostModel

if TYPE_CHECKING:
    from gateway.engine.placement import Engines

log = logging.getLogger(__name__)

#: Builds a runtime for a fetched version (blocking); injected so tests can count or fail loads.
RuntimeLoader = Callable[[Artifact, ModelConfig], Runtime]
#: Connects to a remote runtime for a version (``runtime = "triton"``), on the event loop.
RemoteLoader = Callable[[Artifact, ModelConfig], Awaitable[RemoteRuntime]]


def load_runtime(devices: Devices, artifact: Artifact, config: ModelConfig) -> Runtime:
    """The runtime a model's configuration asks for, loaded by its kind (blocking)."""
    kind = runtime_kind(config.runtime)
    if kind.load is None or artifact.model_file is None:
        raise RuntimeLoadError(f"runtime {config.runtime!r} is not available in this build", reason="runtime")
    return kind.load(artifact.model_file, config.options, devices)


async def connect_remote(artifact: Artifact, config: ModelConfig) -> RemoteRuntime:
    """The remote runtime that serves a version (``runtime = "triton"``), connected by its kind and checked."""
    kind = runtime_kind(config.runtime)
    if kind.connect is None:
        raise RuntimeLoadError(f"runtime {config.runtime!r} is not remote", reason="config")
    return await kind.connect(config.options, artifact.model, artifact.version)


#: A remote call's cost before any is observed: never inline, and batching learns the real one.
_REMOTE_COST = CostModel(base_s=1e-3, per_element_s=0.0, base_elements=1)


def check_batchable(runtime: ModelInfo) -> None:
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


def _remote_not_ready_yet(mv: ModelVersion, exc: Exception) -> bool:
    """Whether a failed load of a remote version may succeed later (its server or model still starting)."""
    triton = mv.config.triton
    return (
        runtime_kind(mv.config.runtime).remote
        and triton.load_retry_max_s > 0
        and isinstance(exc, RuntimeLoadError)
        and exc.reason in ("remote", "timeout")
    )


class VersionLoader:
    """Loads versions from a registry onto runtimes; ``current`` says whether a version is still wanted."""

    def __init__(
        self,
        registry: Registry,
        loader: RuntimeLoader,
        *,
        rng: random.Random,
        current: Callable[[ModelVersion], bool],
        remote_loader: RemoteLoader | None = None,
        engines: Engines | None = None,
        busy: Callable[[], bool] = never_busy,
    ) -> None:
        self.registry = registry
        #: Whether this process is CPU-bound: the "auto" batchers' hint (gateway/batching/cpu.py).
        self._busy = busy
        #: A worker of a multi-process host: versions placed in an engine load there.
        self._engine = None
        if engines is not None:
            from gateway.engine.versions import EngineVersions  # only on a multi-process host

            self._engine = EngineVersions(engines, registry, current)
        self._loader = loader
        self._remote_loader = remote_loader
        self._rng = rng
        self._current = current
        self._signatures: dict[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] = {}
        self._loads: dict[tuple[str, int], asyncio.Task[ModelVersion]] = {}
        #: (model, reason) -> failed loads, for ``tensorgate_model_load_failures_total``.
        self.load_failures: dict[tuple[str, str], int] = {}
        #: Start-up loads of remote versions not ready yet, tried again in the background.
        self._retrying: dict[ModelVersion, RetryLoop] = {}
        #: (model, version) -> warm-ups on synthetic data that failed (the version serves anyway).
        self.warmup_failures: dict[tuple[str, str], int] = {}

    async def stop_retrying(self, mv: ModelVersion) -> None:
        """Stop asking again for a remote version (it is being unloaded)."""
        retry = self._retrying.pop(mv, None)
        if retry is not None:
            await retry.close()

    async def close(self) -> None:
        """Stop the retries and wait for the loads under way."""
        for retry in list(self._retrying.values()):
            await retry.close()
        pending = [t for t in self._loads.values() if not t.done()]
        await asyncio.gather(*pending, return_exceptions=True)
        if self._engine is not None:
            await self._engine.close()

    @staticmethod
    async def release(mv: ModelVersion) -> None:
        """Stop the version's batcher and executor (in-flight calls finish) and free the model."""
        if mv.executor is not None:
            mv.state = VersionState.UNLOADING
        if mv.batcher is not None:
            await mv.batcher.close()
            mv.batcher = None
        if mv.executor is not None:
            await mv.executor.close()
            mv.executor = None

    async def load(self, model: Model, version: int, *, retry_remote: bool = False) -> ModelVersion:
        """Load ``version`` of ``name`` (once, however many callers ask) and warm it up.

        ``retry_remote`` (start-up): a remote version whose model is not ready yet stays LOADING
        and is tried again in the background until it is READY, fails for good, or is unloaded.
        A load of a version being retried makes the next attempt now and answers its outcome.
        """
        name = model.name
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
            engine = self._engine.engines.placing(mv.config) if self._engine is not None else None
            if runtime_kind(mv.config.runtime).remote:
                artifact, executor = await self._load_remote(mv)
            elif engine is not None and self._engine is not None:
                artifact, executor = await self._engine.load(mv, engine)
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
        if mv.config.max_batch_size > 0 and engine is not None and isinstance(executor, RemoteExecutor):
            mv.batcher = self._engine.batcher(mv, executor) if self._engine is not None else None
        elif mv.config.max_batch_size > 0:
            mv.batcher = self._batcher(mv, executor, executor.cost)
            mv.batcher.start()
        mv.state = VersionState.READY
        if not executor.cost.measured:  # synthetic warm-up failed (logged): counted, not fatal
            key = (mv.model, mv.label)
            self.warmup_failures[key] = self.warmup_failures.get(key, 0) + 1
        if engine is not None:
            detail = f"in {engine.name}, sha256 {(artifact.sha256 or '')[:12]}"
        elif isinstance(executor, RemoteExecutor):
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
                check_batchable(runtime)
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
            if not self._current(mv) or mv.state is not VersionState.LOADING:
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
            busy=self._busy,
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
                check_batchable(runtime)
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
