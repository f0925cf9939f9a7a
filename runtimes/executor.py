"""Runs a model's blocking calls off the event loop, with bounded concurrency.

A thread hop costs tens of microseconds, more than a small model's whole computation (the
example fraud scorer runs in about 6 µs). Calls that the warm-up cost model predicts to take
less than ``inline_threshold_s`` therefore run on the event loop directly: they stall it for
less time than the hop would. A prediction is only as good as the warm-up data it came from,
so a call over more than ``inline_max_elements`` input elements never runs inline, whatever is
predicted: a cost line fitted on small samples (or flat, where the batch dimension is fixed)
must not let a big call stall every other request. Everything else runs in the version's own
thread pool, at most ``concurrency`` calls at once; callers beyond that wait on the loop,
cancellable. A version whose warm-up could not be measured runs every call in the pool, timed,
until its cost line is fitted from the first real calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtimes.base import RemoteRuntime, Runtime
from runtimes.warmup import SEED_CALLS, CostLearner, CostModel

log = logging.getLogger(__name__)

#: The most input elements a call may have and still run on the event loop (16 KiB of FP32).
#: Measured on the 2-core CI machine: an Identity or Add takes 5-10 us at 4,096 elements and
#: about 120 us at 1 M, and a model that does real work per element takes longer.
INLINE_MAX_ELEMENTS = 4096


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
        inline_max_elements: int = INLINE_MAX_ELEMENTS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.runtime = runtime
        #: Replaced (one reference swap) once an unmeasured version's first calls are fitted.
        self.cost = cost
        self._name = name
        self._inline_threshold_s = inline_threshold_s
        self._inline_max_elements = inline_max_elements
        self._clock = clock
        self._learner = None if cost.measured else CostLearner()
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
        if self.runs_inline(elements):
            return self.runtime.run(inputs, outputs)
        if self._learner is not None:
            return await self._run_timed(inputs, outputs, elements)
        return await self._run_in_thread(inputs, outputs)

    def runs_inline(self, elements: int) -> bool:
        """Whether a call over ``elements`` input elements runs on the event loop."""
        cost = self.cost
        return (
            cost.measured
            and elements <= self._inline_max_elements
            and cost.predict(elements) < self._inline_threshold_s
        )

    async def _run_in_thread(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        with self._calls:
            async with self._semaphore:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, self.runtime.run, inputs, outputs)

    async def _run_timed(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], elements: int
    ) -> list[np.ndarray]:
        """A call of an unmeasured version: in the pool, timed there (compute only, no queueing)."""
        with self._calls:
            async with self._semaphore:
                loop = asyncio.get_running_loop()
                results, seconds = await loop.run_in_executor(self._pool, self._timed_call, inputs, outputs)
        learner = self._learner
        if learner is not None:  # observed on the loop: no lock needed
            fitted = learner.observe(elements, seconds)
            if fitted is not None:
                self.cost, self._learner = fitted, None
                log.info(
                    "%s: cost model fitted from %d real calls: %.1f us per call at %d elements",
                    self._name, SEED_CALLS, fitted.base_s * 1e6, fitted.base_elements,
                )  # fmt: skip
        return results

    def _timed_call(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> tuple[list[np.ndarray], float]:
        start = self._clock()
        results = self.runtime.run(inputs, outputs)
        return results, self._clock() - start

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
