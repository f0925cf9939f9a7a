"""Per-version inference statistics in the shape of Triton's statistics extension."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.telemetry.histogram import BATCH_BUCKETS, LATENCY_BUCKETS, Histogram


@dataclass(slots=True)
class Duration:
    """A count and the nanoseconds they took in total."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Add ``count`` events that took ``ns`` nanoseconds together."""
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        """``{"count": ..., "ns": ...}``."""
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchDurations:
    """Compute times of the executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class VersionStats:
    """Counters for one loaded version: inferences (rows served) and executions (runtime calls).

    Times come from ``time.perf_counter_ns`` readings the caller already took; the wall clock
    is read once, to turn the last one into Triton's ``last_inference`` (ms since the epoch).
    """

    def __init__(
        self,
        wall_clock: Callable[[], float] = time.time,
        perf_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self._epoch_offset_ns = int(wall_clock() * 1e9) - perf_ns()
        self.inference_count = 0
        self.execution_count = 0
        self.last_ns = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.batches: dict[int, BatchDurations] = {}
        self.direct_count = 0
        self.direct_ns = 0
        # Prometheus histograms (seconds, rows); the unbatched fast path is folded in when read.
        self.queue_seconds = Histogram(LATENCY_BUCKETS)
        self.compute_seconds = Histogram(LATENCY_BUCKETS)
        self.batch_rows = Histogram(BATCH_BUCKETS)

    def request_done(self, ok: bool, rows: int, started_ns: int, ended_ns: int) -> None:
        """One request answered (``ok``) or failed in the runtime or the queue."""
        if ok:
            self.success.add(ended_ns - started_ns)
            self.inference_count += rows
        else:
            self.fail.add(ended_ns - started_ns)
        self.last_ns = ended_ns

    def execution_done(self, rows: int, input_ns: int, infer_ns: int, output_ns: int, requests: int = 1) -> None:
        """One runtime call over ``rows`` rows serving ``requests`` requests."""
        self.execution_count += 1
        self.compute_seconds.observe(infer_ns / 1e9)
        self.batch_rows.observe(rows)
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchDurations()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def queued(self, ns: int) -> None:
        """One request waited ``ns`` nanoseconds in the batch queue."""
        self.queue.add(ns)
        self.queue_seconds.observe(ns / 1e9)

    def unbatched(self, started_ns: int, ended_ns: int) -> None:
        """A one-row request served by its own runtime call, without a queue.

        The hot path of small models: a few additions here, folded into the Triton counters
        (an inference, an execution of batch size 1, zero queue time) when they are read.
        """
        self.direct_count += 1
        self.direct_ns += ended_ns - started_ns
        self.last_ns = ended_ns
        self.compute_seconds.observe((ended_ns - started_ns) / 1e9)

    @property
    def last_inference_ms(self) -> int:
        """When the last request finished, in ms since the epoch (0: never)."""
        return (self.last_ns + self._epoch_offset_ns) // 1_000_000 if self.last_ns else 0

    def to_triton(self, model: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` as Triton's ``GET .../stats`` returns it."""
        n, ns = self.direct_count, self.direct_ns
        zero = Duration()

        def plus(duration: Duration, count: int, total: int) -> dict[str, int]:
            return {"count": duration.count + count, "ns": duration.ns + total}

        batch_stats = []
        for size in sorted(set(self.batches) | ({1} if n else set())):
            b = self.batches.get(size, BatchDurations())
            extra, extra_ns = (n, ns) if size == 1 else (0, 0)
            batch_stats.append(
                {
                    "batch_size": size,
                    "compute_input": plus(b.compute_input, extra, 0),
                    "compute_infer": plus(b.compute_infer, extra, extra_ns),
                    "compute_output": plus(b.compute_output, extra, 0),
                }
            )
        return {
            "name": model,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count + n,
            "execution_count": self.execution_count + n,
            "inference_stats": {
                "success": plus(self.success, n, ns),
                "fail": self.fail.to_json(),
                "queue": plus(self.queue, n, 0),
                "compute_input": plus(self.compute_input, n, 0),
                "compute_infer": plus(self.compute_infer, n, ns),
                "compute_output": plus(self.compute_output, n, 0),
                "cache_hit": zero.to_json(),
                "cache_miss": zero.to_json(),
            },
            "batch_stats": batch_stats,
        }
