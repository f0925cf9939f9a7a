"""Per-request counters and latency histograms of the inference endpoints."""

from __future__ import annotations

from bisect import bisect_left

from gateway.exchange import Exchange
from gateway.telemetry.histogram import LATENCY_BUCKETS, Histogram


class Series:
    """The requests of one (model, version, role): latency histogram and counts by status."""

    __slots__ = ("codes", "latency")

    def __init__(self) -> None:
        self.latency = Histogram(LATENCY_BUCKETS)
        self.codes: dict[int, int] = {}


class RequestMetrics:
    """``tensorgate_requests_total`` and ``tensorgate_request_duration_seconds``, accumulated."""

    def __init__(self) -> None:
        #: (model, version, role) -> its series.
        self.series: dict[tuple[str, str, str], Series] = {}

    def record(self, exchange: Exchange, seconds: float) -> None:
        """Count one finished request (its status set) that took ``seconds`` end to end."""
        key = (exchange.model, exchange.version, exchange.role)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        latency = series.latency  # inlined Histogram.observe: this runs for every request
        latency.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.sum += seconds
        codes = series.codes
        status = exchange.status
        codes[status] = codes.get(status, 0) + 1
