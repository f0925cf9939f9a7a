"""Snapshots of the per-version counters the gateway already keeps, for a rollout's windows.

Nothing is added to the request path: the request metrics (``tensorgate_requests_total`` and
the latency histogram), the shadow runner's agreement counters and the online drift monitor's
latest PSI are read, at each analysis, on the event loop; a window is the difference of two
snapshots (gateway/rollouts/analysis.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
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


# -- the fleet's sums (gateway/rollouts/fleet.py): replicas publish these, the leader adds them up --

#: Per replica (key): (model, version) -> cumulative counters.
Snapshot = dict[str, dict[tuple[str, int], Counters]]


def counters_json(counters: Counters) -> dict[str, Any]:
    """One version's counters as a replica publishes them to the fleet (the summable ones)."""
    doc = asdict(counters)
    doc.pop("bounds", None)
    doc.pop("drift_psi", None)  # the leader's own (a window of its own, not a counter to sum)
    return doc


def counters_from_json(doc: dict[str, Any]) -> Counters:
    """A replica's published counters, read back."""
    return Counters(
        requests=int(doc["requests"]),
        errors=int(doc["errors"]),
        latency=tuple(int(c) for c in doc["latency"]),
        bounds=LATENCY_BUCKETS,
        shadow_mirrored=int(doc["shadow_mirrored"]),
        shadow_failed=int(doc["shadow_failed"]),
        shadow_compared=int(doc["shadow_compared"]),
        shadow_agree=float(doc["shadow_agree"]),
    )


def _plus(a: Counters, b: Counters) -> Counters:
    latency = tuple(x + y for x, y in zip(a.latency, b.latency, strict=True)) if a.latency else b.latency
    return Counters(
        requests=a.requests + b.requests,
        errors=a.errors + b.errors,
        latency=latency,
        bounds=LATENCY_BUCKETS,
        shadow_mirrored=a.shadow_mirrored + b.shadow_mirrored,
        shadow_failed=a.shadow_failed + b.shadow_failed,
        shadow_compared=a.shadow_compared + b.shadow_compared,
        shadow_agree=a.shadow_agree + b.shadow_agree,
    )


def fleet_window(start: Snapshot, now: Snapshot, key: tuple[str, int]) -> Counters:
    """One version's window over the fleet: each replica's counters now minus its own at the start, summed.

    A replica (a source: one process's life) missing at either end counts from the next window.
    """
    total = Counters(latency=(0,) * (len(LATENCY_BUCKETS) + 1), bounds=LATENCY_BUCKETS)
    for source, figures in now.items():
        latest, first = figures.get(key), start.get(source, {}).get(key)
        if latest is None or first is None:
            continue
        total = _plus(total, latest.minus(first))
    return total
