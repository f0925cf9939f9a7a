"""When to dispatch a batch: a fixed queue delay, or "auto" from measured compute times.

Fixed (``max_queue_delay_ms = N``), as Triton's dynamic batcher: a batch goes when it holds
``max_batch_size`` rows (or the largest preferred size), or when its oldest request has waited
N ms, whichever comes first.

Auto (``max_queue_delay_ms = "auto"``): a batch goes as soon as an instance is free. Waiting
while an instance idles never raises throughput: the instance is not the bottleneck then, and
a lone request is served at its unbatched latency. Under load every instance is busy, so
requests pile up while the previous batch computes, and the next batch takes all of them:
batches grow with the load, by themselves, with no delay to tune ("natural batching"). That
premise fails when the process is CPU-bound on the CPUs it may use (``busy``, from
gateway/batching/cpu.py): computing a small batch then takes the CPU from the requests that
would fill the next one, so batches stay small. Then, when requests waited for the instance
(more are on their way), a batch waits for rows, from when the instance became free, up to
the predicted compute time of a full batch; a request that finds the instance idle still
goes at once. With
``target_p99_ms``, a batch is also capped at the largest size whose predicted compute time
still fits in what is left of the target once the oldest request's wait is paid, so queues
under overload turn into more, smaller batches instead of one late one. Compute times are
learned per batch size from every batch (an exponentially weighted mean), seeded by the
warm-up cost line.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.batching.cpu import never_busy

_ALPHA = 0.2


class ComputeTimes:
    """Seconds per batch, by batch size: measured means, else scaled from the nearest one."""

    def __init__(self, seed: Callable[[int], float]) -> None:
        self._seed = seed
        self._mean: dict[int, float] = {}

    def observe(self, rows: int, seconds: float) -> None:
        """Fold in one batch's measured compute time."""
        previous = self._mean.get(rows)
        self._mean[rows] = seconds if previous is None else previous + _ALPHA * (seconds - previous)

    def predict(self, rows: int) -> float:
        """Expected compute seconds for a batch of ``rows``."""
        known = self._mean.get(rows)
        if known is not None:
            return known
        if not self._mean:
            return self._seed(rows)
        nearest = min(self._mean, key=lambda n: abs(n - rows))
        # Per-row cost falls as batches grow: scaling up from a smaller batch overestimates,
        # which errs on the side of the latency target.
        return self._mean[nearest] * rows / nearest


class DelayPolicy:
    """How long to wait for more rows, and how many rows a batch may take."""

    def __init__(
        self,
        *,
        max_batch_size: int,
        preferred_batch_sizes: tuple[int, ...],
        delay_s: float | None,
        target_p99_s: float,
        compute: ComputeTimes,
        busy: Callable[[], bool] = never_busy,
    ) -> None:
        self.max_batch_size = max_batch_size
        fitting = [s for s in preferred_batch_sizes if s <= max_batch_size]
        #: Rows at which a batch goes at once, without waiting out the delay.
        self.full_rows = max(fitting) if fitting else max_batch_size
        self.delay_s = delay_s
        self.target_p99_s = target_p99_s
        self.compute = compute
        #: Whether the process is CPU-bound (gateway/batching/cpu.py): "auto" then waits for rows.
        self.busy = busy
        #: When the latest request was queued, and the mean gap between queued requests (seconds).
        self._last_arrival = float("-inf")
        self._gap = 0.0

    def arrived(self, now: float) -> None:
        """A request was queued at ``now`` (the gap between arrivals bounds a CPU-bound hold)."""
        gap = now - self._last_arrival
        if gap < 1.0:  # a pause of a second or more starts a new burst, not a gap within one
            self._gap = gap if not self._gap else self._gap + _ALPHA * (gap - self._gap)
        self._last_arrival = now

    @property
    def adaptive(self) -> bool:
        """True for ``max_queue_delay_ms = "auto"``."""
        return self.delay_s is None

    def wait_s(self, oldest_enqueued: float, now: float, rows_ready: int, free_since: float | None = None) -> float:
        """Seconds to keep waiting for rows before dispatching what is ready (<= 0: go now).

        ``free_since``: when an instance last became free ("auto" on a CPU-bound process).
        """
        if rows_ready >= self.full_rows:
            return 0.0
        if self.delay_s is not None:
            return oldest_enqueued + self.delay_s - now
        # Requests that waited for the instance are the sign that more are on their way: a
        # request arriving at an idle instance (one client at a time) goes at once, always.
        if free_since is None or oldest_enqueued >= free_since or not self.busy():
            return 0.0
        # CPU-bound: computing now would take the CPU from the requests that fill the batch. Wait,
        # from when the instance became free, up to what a full batch takes to compute (within
        # what the p99 target leaves), so batches fill and each row costs less; but only while
        # requests keep coming (no arrival for twice the usual gap: the rest are not on their way,
        # and holding would leave the CPU idle).
        hold = self.compute.predict(self.full_rows)
        if self.target_p99_s:
            hold = min(hold, self.target_p99_s - hold)
        return min(free_since + hold, self._last_arrival + 2 * self._gap) - now

    def max_rows(self, oldest_enqueued: float, now: float) -> int:
        """The most rows the next batch may take."""
        if not self.adaptive or not self.target_p99_s:
            return self.max_batch_size
        budget = self.target_p99_s - (now - oldest_enqueued)
        rows = self.max_batch_size
        while rows > 1 and self.compute.predict(rows) > budget:
            rows //= 2
        return max(rows, 1)
