"""Whether this process has lately used about all the CPU it may: the "auto" batcher's hint to wait.

Natural batching (gateway/batching/policy.py) dispatches as soon as an instance is free, on
the premise that computing takes nothing from taking requests in. When the process is
CPU-bound on the CPUs it may use (one core, or its share of a host's cores), a small batch
computed at once takes the CPU from the requests that would have filled the next: on one
core, unary gRPC calls of the batched MLP ran in batches of 1.3 rows and served 0.6x what a
fixed 2-5 ms delay serves (loadtests/grpc_batching.py, docs/benchmarks.md). ``CpuBusy`` tells
the policy when that is the case, from the process's CPU time (every thread's) over the wall
time since the previous sample, sampled at most every ``interval_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CpuBusy:
    """Callable: True when the process used at least ``threshold`` of ``cpus`` over the latest interval."""

    def __init__(
        self,
        cpus: float,
        *,
        threshold: float = 0.75,
        interval_s: float = 0.1,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = threshold * max(cpus, 0.01)
        self._interval_s = interval_s
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._at = clock()
        self._cpu = cpu_clock()
        self._busy = False

    def __call__(self) -> bool:
        """Whether the process is CPU-bound (re-measured when the interval has passed since the last sample)."""
        now = self._clock()
        elapsed = now - self._at
        if elapsed >= self._interval_s:
            cpu = self._cpu_clock()
            # An idle stretch since the last call counts in: a process that was idle is not busy.
            self._busy = cpu - self._cpu >= self._limit * elapsed
            self._at, self._cpu = now, cpu
        return self._busy


def never_busy() -> bool:
    """The hint where none is measured (an engine, tests): natural batching as documented."""
    return False
