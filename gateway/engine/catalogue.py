"""The engine's versions: each loaded once per device, held by the workers that asked for it.

The engine reuses the worker's own catalogue (``ModelManager`` and its ``VersionLoader``:
fetch -> runtime -> warm-up -> executor -> batcher), without the start-up loads: a version is
loaded when a first worker asks, and unloaded when no worker holds it any more (each worker
unloads what it loaded; a worker that stops answering heartbeats lets go of everything).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from gateway.models import ModelManager, ModelVersion, VersionState
from gateway.stats import VersionStats
from runtimes.base import RuntimeLoadError, TensorSpec

log = logging.getLogger(__name__)


def specs_to_wire(specs: tuple[TensorSpec, ...]) -> list[list[Any]]:
    """Tensor specs as JSON lists ``[name, datatype, shape]``."""
    return [[s.name, s.datatype, list(s.shape)] for s in specs]


def specs_from_wire(data: list[list[Any]]) -> tuple[TensorSpec, ...]:
    """Tensor specs back from ``specs_to_wire``."""
    return tuple(TensorSpec(str(n), str(d), tuple(int(x) for x in shape)) for n, d, shape in data)


def describe(mv: ModelVersion) -> dict[str, Any]:
    """What a worker needs of a loaded version: specs, platform, provider, digest, provenance, cost."""
    executor = mv.executor
    assert executor is not None  # READY
    info = executor.runtime
    cost = executor.cost
    artifact = mv.artifact
    return {
        "platform": info.platform,
        "provider": info.provider,
        "inputs": specs_to_wire(info.inputs),
        "outputs": specs_to_wire(info.outputs),
        "sha256": artifact.sha256 if artifact is not None else None,
        "provenance": dict(artifact.provenance) if artifact is not None and artifact.provenance else None,
        "cost": [cost.base_s, cost.per_element_s, cost.base_elements, cost.measured],
        "batched": mv.batcher is not None,
    }


class EngineModels:
    """Loads, holds and unloads the engine's versions; ``stats`` gives their batch statistics."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        #: (model, version) -> the workers (socket identities) holding it.
        self._holders: dict[tuple[str, int], set[bytes]] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        #: (model, version) -> the loaded version, for the request path (one dict lookup).
        self._versions: dict[tuple[str, int], ModelVersion] = {}

    def _lock(self, key: tuple[str, int]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def load(self, worker: bytes, model: str, version: int) -> dict[str, Any]:
        """Load (once) and hold ``version`` of ``model`` for ``worker``; RuntimeLoadError if it fails."""
        key = (model, version)
        async with self._lock(key):
            found = await self.manager.discover(model)
            if found.config_error is not None:
                raise RuntimeLoadError(found.config_error, "config")
            mv = await self.manager.load(model, version)
            if mv.state is not VersionState.READY:
                raise RuntimeLoadError(mv.error or "the version failed to load", mv.failure or "invalid_model")
            self._holders.setdefault(key, set()).add(worker)
            self._versions[key] = mv
            return describe(mv)

    async def unload(self, worker: bytes, model: str, version: int) -> None:
        """``worker`` lets go of a version; the last one out unloads it (in-flight calls finish)."""
        key = (model, version)
        async with self._lock(key):
            holders = self._holders.get(key)
            if holders is None:
                return
            holders.discard(worker)
            if holders:
                return
            del self._holders[key]
            mv = self._versions.pop(key, None)
            found = await self.manager.discover(model) if mv is not None else None
            if found is not None and found.versions.get(version) is mv:
                await self.manager.unload(found, version)

    async def release_worker(self, worker: bytes) -> None:
        """A worker went away without a word: let go of everything it held."""
        for model, version in [key for key, holders in self._holders.items() if worker in holders]:
            await self.unload(worker, model, version)

    def held(self) -> dict[tuple[str, int], int]:
        """(model, version) -> how many workers hold it."""
        return {key: len(holders) for key, holders in self._holders.items()}

    def servable(self, model: str, version: int) -> ModelVersion | None:
        """The READY version, or None."""
        mv = self._versions.get((model, version))
        return mv if mv is not None and mv.state is VersionState.READY else None

    def stats(self) -> dict[tuple[str, str], VersionStats]:
        """(model, version) -> the engine's statistics of that version (batch-level: executions, queue)."""
        return {(m.name, mv.label): mv.stats for m in self.manager.models() for mv in m.versions.values()}

    def stats_source(self) -> Iterator[tuple[str, str, VersionStats]]:
        """``(model, version, statistics)`` of every version (gateway.host.control's StatsSource)."""
        for (model, version), stats in self.stats().items():
            yield model, version, stats
