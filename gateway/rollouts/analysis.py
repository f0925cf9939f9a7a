"""One analysis window: the candidate's and the primary's figures, and the verdict on them (pure).

The figures are deltas of counters the gateway keeps anyway (gateway/rollouts/figures.py takes
the snapshots), so the analysis costs the request path nothing. Errors are the candidate's 5xx
answers, timeouts (504) included; a 4xx is the client's fault and does not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.rollouts.spec import Analysis

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative counters of one version at one instant (subtract two for a window)."""

    requests: int = 0
    errors: int = 0
    #: Latency histogram counts per bucket (the last is +Inf), over the bounds ``bounds``.
    latency: tuple[int, ...] = ()
    bounds: tuple[float, ...] = ()
    shadow_mirrored: int = 0
    shadow_failed: int = 0
    shadow_compared: int = 0
    shadow_agree: float = 0.0
    #: The drift monitor's latest PSI, the worst feature (a window of its own, not a counter).
    drift_psi: float | None = None

    def minus(self, start: Counters) -> Counters:
        """What happened between ``start`` and this snapshot."""
        latency = self.latency
        if start.latency and len(start.latency) == len(latency):
            latency = tuple(a - b for a, b in zip(latency, start.latency, strict=True))
        return Counters(
            requests=self.requests - start.requests,
            errors=self.errors - start.errors,
            latency=latency,
            bounds=self.bounds,
            shadow_mirrored=self.shadow_mirrored - start.shadow_mirrored,
            shadow_failed=self.shadow_failed - start.shadow_failed,
            shadow_compared=self.shadow_compared - start.shadow_compared,
            shadow_agree=self.shadow_agree - start.shadow_agree,
            drift_psi=self.drift_psi,
        )


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float]) -> float | None:
    """The ``q`` quantile of a histogram, interpolated inside its bucket as Prometheus does."""
    total = sum(counts)
    if total <= 0 or not bounds:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if running + count >= rank and count > 0:
            if i >= len(bounds):  # the +Inf bucket: the highest finite bound is all we know
                return float(bounds[-1])
            low = 0.0 if i == 0 else float(bounds[i - 1])
            return low + (float(bounds[i]) - low) * (rank - running) / count
        running += count
    return float(bounds[-1])


@dataclass(frozen=True, slots=True)
class Check:
    """One figure against its threshold; ``ok`` None when there was nothing to judge."""

    name: str
    value: float | None
    threshold: float
    ok: bool | None

    def to_json(self) -> dict[str, Any]:
        """``{"name", "value", "threshold", "ok"}``."""
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "ok": self.ok}


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict on one window, with every figure."""

    verdict: str
    requests: int
    checks: tuple[Check, ...] = field(default_factory=tuple)
    message: str = ""
    window_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The verdict, the candidate's request count, and each check."""
        return {
            "verdict": self.verdict,
            "requests": self.requests,
            "window_s": round(self.window_s, 3),
            "message": self.message,
            "checks": [c.to_json() for c in self.checks],
        }


def _judge(name: str, value: float | None, threshold: float | None, *, at_most: bool) -> Check | None:
    if threshold is None:
        return None
    if value is None:
        return Check(name, None, threshold, None)
    return Check(name, value, threshold, value <= threshold if at_most else value >= threshold)


def evaluate(
    spec: Analysis, candidate: Counters, primary: Counters, *, shadowing: bool, window_s: float = 0.0
) -> Result:
    """Judge one window: FAIL if any check fails, INCONCLUSIVE below ``min_requests``, else PASS.

    While shadowing, the candidate's figures are its shadow copies (failures count as errors,
    no latency ratio); once it takes traffic, its routed requests. Errors are judged even below
    ``min_requests`` once there are more than the rate allows of ``min_requests``: a candidate
    failing fast is stopped at the first window, not after enough traffic to be sure.
    """
    if shadowing:
        requests, errors = candidate.shadow_mirrored, candidate.shadow_failed
    else:
        requests, errors = candidate.requests, candidate.errors
    checks: list[Check] = []
    rate = errors / requests if requests > 0 else None
    error_check = _judge("error_rate", rate, spec.max_error_rate, at_most=True)
    enough = requests >= spec.min_requests  # min_requests 0: judge whatever came, even nothing
    if error_check is not None and not enough and spec.max_error_rate is not None:
        # Below min_requests: fail only when the errors alone already exceed the allowed share.
        allowed = spec.max_error_rate * max(spec.min_requests, 1)
        error_check = Check(error_check.name, rate, spec.max_error_rate, None if errors <= allowed else False)
    if error_check is not None:
        checks.append(error_check)
    if not shadowing and spec.max_p99_ratio is not None:
        mine = quantile(0.99, candidate.latency, candidate.bounds)
        theirs = quantile(0.99, primary.latency, primary.bounds)
        ratio = mine / theirs if mine is not None and theirs else None
        check = _judge("p99_ratio", ratio, spec.max_p99_ratio, at_most=True)
        assert check is not None
        checks.append(check if enough else Check(check.name, check.value, check.threshold, None))
    if spec.min_shadow_agreement is not None and shadowing:
        agreement = candidate.shadow_agree / candidate.shadow_compared if candidate.shadow_compared else None
        check = _judge("shadow_agreement", agreement, spec.min_shadow_agreement, at_most=False)
        assert check is not None
        checks.append(check if enough else Check(check.name, check.value, check.threshold, None))
    drift = _judge("drift_psi", candidate.drift_psi, spec.max_drift_psi, at_most=True)
    if drift is not None:
        checks.append(drift)
    failed = [c for c in checks if c.ok is False]
    if failed:
        message = "; ".join(f"{c.name} {_fmt(c.value)} past {_fmt(c.threshold)}" for c in failed)
        return Result(FAIL, requests, tuple(checks), message, window_s)
    if not enough:
        message = f"{requests} of {spec.min_requests} requests needed"
        return Result(INCONCLUSIVE, requests, tuple(checks), message, window_s)
    # A figure that cannot exist in this window (no primary traffic at weight 100, no drift
    # reference) is shown as n/a and does not hold the rollout: only min_requests does.
    missing = ", ".join(c.name for c in checks if c.ok is None)
    return Result(PASS, requests, tuple(checks), f"no figure for {missing}" if missing else "", window_s)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
