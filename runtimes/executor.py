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

from runtimes.base import Runtime
from runtimes.warmup import CostModel


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
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def runs_inline(self, elements: int) -> bool:
        """Whether a call over ``elements`` input elements is cheap enough for the loop."""
        return self.cost.predict(elements) < self._inline_threshold_s

    @property
    def inflight(self) -> int:
        """Calls running (or waiting) in the thread pool."""
        return self._inflight

    async def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], elements: int) -> list[np.ndarray]:
        """Compute ``outputs``; raises what the runtime raises."""
        if self.cost.predict(elements) < self._inline_threshold_s:
            return self.runtime.run(inputs, outputs)
        return await self._run_in_thread(inputs, outputs)

    async def _run_in_thread(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        self._inflight += 1
        self._idle.clear()
        try:
            async with self._semaphore:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, self.runtime.run, inputs, outputs)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def drain(self) -> None:
        """Wait until no call is in flight."""
        await self._idle.wait()

    async def close(self) -> None:
        """Wait for in-flight calls, stop the threads, release the model."""
        await self.drain()
        await asyncio.to_thread(self._pool.shutdown, True)
        self.runtime.close()
