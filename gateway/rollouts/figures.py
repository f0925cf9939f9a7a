"""Snapshots of the per-version counters the gateway already keeps, for a rollout's windows.

Nothing is added to the request path: the request metrics (``tensorgate_requests_total`` and
the latency histogram), the shadow runner's agreement counters and the online drift monitor's
latest PSI are read, at each analysis, on the event loop; a window is the difference of two
snapshots (gateway/rollouts/analysis.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.rollouts.analysis import Counters
from gateway.telemetry.histogram import LATENCY_BUCKETS
from gateway.telemetry.requests import RequestMetrics


class ShadowCounters(Protocol):
    """What a rollout reads of a shadow version's counters (gateway.release.shadow.ShadowStats)."""

    mirrored: int
    failed: int
    timed_out: int
    agree_rows: float
    compared_rows: int

    def fold(self) -> None:
        """Compare the queued pairs now."""


class Figures:
    """Reads one version's cumulative counters; the sources are the gateway's own."""

    def __init__(
        self,
        requests: RequestMetrics,
        shadows: Callable[[], Mapping[tuple[str, int], Any]] | None = None,
        drift: Callable[[], Mapping[tuple[str, str, str], float]] | None = None,
    ) -> None:
        self._requests = requests
        self._shadows = shadows
        self._drift = drift

    def snapshot(self, model: str, version: int) -> Counters:
        """The counters of ``version`` of ``model`` now: routed and pinned requests, shadows, drift."""
        name = str(version)
        requests = errors = 0
        latency = [0] * (len(LATENCY_BUCKETS) + 1)
        for (m, v, role), series in list(self._requests.series.items()):
            if m != model or v != name or role == "shadow":
                continue
            for code, count in list(series.codes.items()):
                requests += count
                if code >= 500:  # 5xx, timeouts (504) included; a 4xx is the client's
                    errors += count
            for i, count in enumerate(series.latency.counts):
                latency[i] += count
        mirrored = failed = compared = 0
        agree = 0.0
        stats: ShadowCounters | None = self._shadows().get((model, version)) if self._shadows else None
        if stats is not None:
            stats.fold()
            mirrored, failed = stats.mirrored, stats.failed + stats.timed_out
            compared, agree = stats.compared_rows, stats.agree_rows
        psi = None
        if self._drift is not None:
            scores = [value for (m, v, _), value in self._drift().items() if m == model and v == name]
            psi = max(scores) if scores else None
        return Counters(
            requests=requests,
            errors=errors,
            latency=tuple(latency),
            bounds=LATENCY_BUCKETS,
            shadow_mirrored=mirrored,
            shadow_failed=failed,
            shadow_compared=compared,
            shadow_agree=agree,
            drift_psi=psi,
        )
