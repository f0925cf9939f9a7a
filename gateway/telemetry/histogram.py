"""A histogram accumulator cheap enough for the inference hot path.

prometheus-client's labelled ``Histogram.observe`` costs a label lookup and a lock per call,
several percent of a small model's request (docs/benchmarks.md). These accumulators are plain
counters updated on the event loop; the collector turns them into Prometheus histograms when
``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from functools import cache

from prometheus_client.utils import floatToGoString

#: Seconds: from a 100 us inference to a 10 s stalled request.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Rows per runtime call.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Counts per bucket (the last is +Inf) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (``le`` semantics: a value equal to a bound falls in its bucket)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self, extra: tuple[float, int] | None = None) -> tuple[list[tuple[str, float]], float]:
        """Prometheus buckets ``[(le, cumulative count), ..., ("+Inf", total)]`` and the sum.

        ``extra`` folds in ``count`` more observations of one value without storing them.
        """
        counts = list(self.counts)
        total_sum = self.sum
        if extra is not None and extra[1]:
            value, count = extra
            counts[bisect_left(self.bounds, value)] += count
            total_sum += value * count
        buckets: list[tuple[str, float]] = []
        running = 0
        for le, count in zip(_les(self.bounds), counts, strict=True):
            running += count
            buckets.append((le, running))
        return buckets, total_sum


@cache
def _les(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` label of each bucket, +Inf last (formatted once per set of bounds: every scrape reads them)."""
    return tuple(floatToGoString(bound) for bound in (*bounds, float("inf")))  # type: ignore[no-untyped-call]
