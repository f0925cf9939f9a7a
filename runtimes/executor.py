"""Runs a model's blocking calls off the event loop, with bounded concurrency.

A thread hop costs tens of microseconds, more than a small model's whole computation (the
example fraud scorer runs in about 6 µs). Calls that the warm-up cost model predicts to take
less than ``inline_threshold_s`` therefore run on the event loop directly: they stall it for
less time than the hop would. Everything else runs in the version's own thread pool, at most
``concurrency`` calls at once; callers beyond that wait on the loop, cancellable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtimes.base import RemoteRuntime, Runtime
from runtimes.warmup import CostModel


class InflightCalls:
    """Counts the calls in flight (``with calls: ...``), so that a drain can wait for none."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until no call is in flight."""
        await self._idle.wait()


class Executor:
    """Bounded, cancellable execution of one runtime's ``run`` calls."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        concurrency: int,
        inline_threshold_s: float,
        cost: CostModel,
        name: str,
    ) -> None:
        self.runtime = runtime
        self.cost = cost
        self._inline_threshold_s = inline_threshold_s
        self._semaphore = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"infer-{name}")
        self._calls = InflightCalls()

    @property
    def inflight(self) -> int:
        """Calls running (or waiting) in the thread pool."""
        return self._calls.count

    async def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], elements: int, timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Compute ``outputs``; raises what the runtime raises.

        ``timeout_s`` is for remote runtimes: a computation in this process is not interrupted
        (the batcher enforces deadlines while requests wait, which is where time goes here).
        """
        if self.cost.predict(elements) < self._inline_threshold_s:
            return self.runtime.run(inputs, outputs)
        return await self._run_in_thread(inputs, outputs)

    async def _run_in_thread(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        with self._calls:
            async with self._semaphore:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, self.runtime.run, inputs, outputs)

    async def drain(self) -> None:
        """Wait until no call is in flight."""
        await self._calls.drained()

    async def close(self) -> None:
        """Wait for in-flight calls, stop the threads, release the model."""
        await self.drain()
        await asyncio.to_thread(self._pool.shutdown, True)
        self.runtime.close()


class RemoteExecutor:
    """Calls of a remote runtime: coroutines on the event loop, counted so that a drain can wait."""

    def __init__(self, runtime: RemoteRuntime, cost: CostModel) -> None:
        self.runtime = runtime
        #: A guess that the batcher's compute estimate refines with every observed call.
        self.cost = cost
        self._calls = InflightCalls()

    @property
    def inflight(self) -> int:
        """Calls awaiting the remote."""
        return self._calls.count

    async def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], elements: int, timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Compute ``outputs`` remotely within ``timeout_s``; raises what the runtime raises."""
        with self._calls:
            return await self.runtime.infer(inputs, outputs, timeout_s)

    async def drain(self) -> None:
        """Wait until no call is in flight."""
        await self._calls.drained()

    async def close(self) -> None:
        """Wait for in-flight calls, then close the runtime's connections."""
        await self.drain()
        await self.runtime.close()


#: Either executor: the batcher, the inference path and the shadows use them alike.
AnyExecutor = Executor | RemoteExecutor
