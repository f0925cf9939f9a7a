"""What a worker's ModelVersion holds for a version placed in an engine.

``EngineRuntime`` is the version's runtime as far as the worker can tell (specs, platform,
provider; ``infer`` sends the call to the engine), wrapped in a ``RemoteExecutor`` like a
remote Triton model. ``EngineBatcher`` has the Batcher's interface for a version that batches:
the request, its priority and its deadline go to the engine, whose Batcher forms batches from
every worker's requests; a client that leaves cancels the request there. The worker records
request-level statistics as ever (gateway/inference.py); batch-level ones are the engine's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gateway.batching.queue import ClientWatch
from gateway.engine.catalogue import specs_from_wire
from gateway.engine.client import EngineClient
from gateway.errors import Unavailable
from runtimes.base import TensorSpec
from runtimes.warmup import CostModel


class EngineRuntime:
    """A version computed in an engine (a RemoteRuntime: the worker awaits its answers)."""

    def __init__(self, client: EngineClient, model: str, version: int, described: Mapping[str, Any]) -> None:
        self.client = client
        self.model = model
        self.version = version
        self.closed = False
        self._platform = str(described["platform"])
        self._provider = str(described["provider"])
        self._inputs = specs_from_wire(described["inputs"])
        self._outputs = specs_from_wire(described["outputs"])

    @property
    def platform(self) -> str:
        """The Triton platform name of the engine's runtime."""
        return self._platform

    @property
    def provider(self) -> str:
        """The execution provider in the engine."""
        return self._provider

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs."""
        return self._outputs

    @property
    def ready(self) -> bool:
        """Whether the engine answers."""
        return self.client.up and not self.closed

    @property
    def circuit(self) -> str:
        """No circuit breaker: an engine that dies fails its requests at once and is restarted."""
        return "closed"

    @property
    def retries(self) -> int:
        """Calls are never tried again."""
        return 0

    @property
    def circuit_opens(self) -> int:
        """The circuit never opens."""
        return 0

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Compute ``outputs`` in the engine (unbatched)."""
        return await self.client.infer(
            self.model, self.version, inputs, outputs, batched=False, timeout_s=timeout_s or 0.0
        )

    async def close(self) -> None:
        """Let the engine know this worker no longer holds the version."""
        if not self.closed:
            self.closed = True
            await self.client.unload(self.model, self.version)


def engine_cost(described: Mapping[str, Any]) -> CostModel:
    """The engine's cost line of the version (measured at its warm-up)."""
    base_s, per_element_s, base_elements, measured = described["cost"]
    return CostModel(float(base_s), float(per_element_s), int(base_elements), bool(measured))


class EngineBatcher:
    """The Batcher's interface for a version whose batches form in the engine."""

    def __init__(self, runtime: EngineRuntime, *, priority_levels: int, name: str) -> None:
        self.priority_levels = priority_levels
        self._runtime = runtime
        self._client = runtime.client
        self._name = name
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = False

    def start(self) -> None:
        """Nothing to start: the engine's batcher runs."""

    @property
    def queued(self) -> int:
        """Always 0 here: requests queue in the engine, whose batcher reports the depth."""
        return 0

    @property
    def inflight(self) -> int:
        """Requests sent to the engine and not answered yet."""
        return self._inflight

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str],
        rows: int,
        *,
        priority: int = 0,
        timeout_s: float = 0.0,
        client: ClientWatch | None = None,
    ) -> list[np.ndarray]:
        """Queue a request in the engine's batcher and wait for its rows (see Batcher.submit)."""
        if self._stopped:
            raise Unavailable(f"{self._name} is not available: the model version is unloading")
        self._inflight += 1
        self._idle.clear()
        try:
            runtime = self._runtime
            return await self._client.infer(
                runtime.model, runtime.version, inputs, outputs,
                batched=True, priority=priority, timeout_s=timeout_s, client=client,
            )  # fmt: skip
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def withdraw_gone(self) -> int:
        """Requests of clients gone are withdrawn by the engine as soon as the worker tells it."""
        return 0

    async def drain(self, poll_s: float = 0.002) -> None:
        """Wait until every request sent has been answered."""
        await self._idle.wait()

    async def close(self) -> None:
        """Refuse new requests; those sent are answered by the engine."""
        self._stopped = True
        await self._idle.wait()
