"""A rollout's spec, as ``POST /admin/models/{m}/rollouts`` takes it: parsed and checked, no I/O.

Pure standard library (the CLI parses specs too, and must not import numpy or the server).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

_HEADER = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: The longest step, shadow phase or interval a spec may ask for: a week.
_MAX_S = 7 * 24 * 3600.0
_MAX_STEPS = 100
ON_SUCCESS = ("promote", "pause")
_ANALYSIS_FIELDS = {
    "interval_s", "min_requests", "max_error_rate", "max_p99_ratio", "min_shadow_agreement", "max_drift_psi",
    "failure_limit",
}  # fmt: skip


class SpecError(ValueError):
    """A spec that cannot be run; the message names the field."""


@dataclass(frozen=True, slots=True)
class Step:
    """Give the candidate ``weight`` percent of the traffic, then hold it for ``pause_s`` seconds."""

    weight: int
    pause_s: float

    def to_json(self) -> dict[str, Any]:
        """``{"weight": ..., "pause_s": ...}``."""
        return {"weight": self.weight, "pause_s": self.pause_s}


@dataclass(frozen=True, slots=True)
class ShadowFirst:
    """Mirror ``fraction`` of the requests to the candidate for ``duration_s`` before it takes traffic."""

    fraction: float
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        """``{"fraction": ..., "duration_s": ...}``."""
        return {"fraction": self.fraction, "duration_s": self.duration_s}


@dataclass(frozen=True, slots=True)
class Analysis:
    """What each analysis window checks; a threshold left out (None) is not checked."""

    interval_s: float = 30.0
    min_requests: int = 0
    max_error_rate: float | None = None
    max_p99_ratio: float | None = None
    min_shadow_agreement: float | None = None
    max_drift_psi: float | None = None
    failure_limit: int = 1

    def to_json(self) -> dict[str, Any]:
        """Every field, None for thresholds not checked."""
        return {
            "interval_s": self.interval_s,
            "min_requests": self.min_requests,
            "max_error_rate": self.max_error_rate,
            "max_p99_ratio": self.max_p99_ratio,
            "min_shadow_agreement": self.min_shadow_agreement,
            "max_drift_psi": self.max_drift_psi,
            "failure_limit": self.failure_limit,
        }


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """The whole spec: the candidate ``to``, its phases, and how each window is judged."""

    to: int
    steps: tuple[Step, ...]
    analysis: Analysis = field(default_factory=Analysis)
    shadow_first: ShadowFirst | None = None
    sticky_header: str | None = None
    on_success: str = "promote"
    reason: str | None = None
    webhook: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The spec as ``parse_spec`` reads it back (defaults filled in)."""
        return {
            "to": str(self.to),
            "shadow_first": self.shadow_first.to_json() if self.shadow_first else None,
            "steps": [s.to_json() for s in self.steps],
            "sticky_header": self.sticky_header,
            "analysis": self.analysis.to_json(),
            "on_success": self.on_success,
            "reason": self.reason,
            "webhook": self.webhook,
        }


def _number(doc: dict[str, Any], key: str, where: str, *, low: float, high: float, default: Any = None) -> Any:
    value = doc.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(f"{where}{key} must be a number")
    if not low <= value <= high:
        raise SpecError(f"{where}{key} must be between {low:g} and {high:g}, not {value}")
    return float(value)


def _integer(doc: dict[str, Any], key: str, where: str, *, low: int, high: int, default: int) -> int:
    value = doc.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise SpecError(f"{where}{key} must be an integer between {low} and {high}")
    return value


def _object(value: Any, where: str, known: set[str]) -> dict[str, Any]:
    if type(value) is not dict:
        raise SpecError(f"{where} must be an object")
    unknown = sorted(set(value) - known)
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0][:100]!r}")
    return value


def parse_version_text(value: Any, where: str = "to") -> int:
    """A version number given as ``"3"`` or ``3``."""
    if type(value) is int and 1 <= value < 2**63:
        return value
    if type(value) is str and value.isascii() and value.isdigit() and 0 < len(value) < 19 and int(value) >= 1:
        return int(value)
    raise SpecError(f'{where} must be a version number such as "3"')


def parse_spec(doc: Any) -> RolloutSpec:
    """The spec ``doc`` describes; SpecError (a 400) naming the first problem."""
    top = _object(doc, "the rollout spec", {
        "to", "shadow_first", "steps", "sticky_header", "analysis", "on_success", "reason", "actor", "webhook",
    })  # fmt: skip
    if "to" not in top:
        raise SpecError("'to' is required: the candidate version")
    to = parse_version_text(top["to"])
    shadow = None
    if top.get("shadow_first") is not None:
        s = _object(top["shadow_first"], "shadow_first", {"fraction", "duration_s"})
        fraction = _number(s, "fraction", "shadow_first.", low=0.0, high=1.0, default=1.0)
        if fraction == 0:
            raise SpecError("shadow_first.fraction must be in (0, 1]")
        duration = _number(s, "duration_s", "shadow_first.", low=0.0, high=_MAX_S)
        if duration is None:
            raise SpecError("shadow_first.duration_s is required")
        shadow = ShadowFirst(fraction, duration)
    raw_steps = top.get("steps", [])
    if type(raw_steps) is not list or len(raw_steps) > _MAX_STEPS:
        raise SpecError(f"steps must be a list of at most {_MAX_STEPS} steps")
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        s = _object(raw, f"steps[{i}]", {"weight", "pause_s"})
        weight = s.get("weight")
        if type(weight) is not int or not 0 < weight <= 100:
            raise SpecError(f"steps[{i}].weight must be an integer in 1..100")
        if steps and weight < steps[-1].weight:
            raise SpecError(f"steps[{i}].weight must not be below the step before it")
        pause = _number(s, "pause_s", f"steps[{i}].", low=0.0, high=_MAX_S, default=0.0)
        steps.append(Step(weight, pause))
    if not steps and shadow is None:
        raise SpecError("a rollout needs steps, shadow_first, or both")
    given = top.get("analysis")
    a = _object({} if given is None else given, "analysis", _ANALYSIS_FIELDS)
    analysis = Analysis(
        interval_s=_number(a, "interval_s", "analysis.", low=0.05, high=_MAX_S, default=30.0),
        min_requests=_integer(a, "min_requests", "analysis.", low=0, high=10**9, default=0),
        max_error_rate=_number(a, "max_error_rate", "analysis.", low=0.0, high=1.0),
        max_p99_ratio=_number(a, "max_p99_ratio", "analysis.", low=0.0, high=1e6),
        min_shadow_agreement=_number(a, "min_shadow_agreement", "analysis.", low=0.0, high=1.0),
        max_drift_psi=_number(a, "max_drift_psi", "analysis.", low=0.0, high=1e6),
        failure_limit=_integer(a, "failure_limit", "analysis.", low=1, high=10**6, default=1),
    )
    sticky = top.get("sticky_header")
    if sticky is not None and (type(sticky) is not str or not _HEADER.match(sticky)):
        raise SpecError("sticky_header must be a header name (letters, digits, '-', '_')")
    on_success = top.get("on_success", "promote")
    if on_success not in ON_SUCCESS:
        raise SpecError(f"on_success must be one of {', '.join(ON_SUCCESS)}")
    reason = top.get("reason")
    if reason is not None and (type(reason) is not str or len(reason) > 4096):
        raise SpecError("reason must be a string of at most 4096 characters")
    webhook = top.get("webhook")
    if webhook is not None and (
        type(webhook) is not str or not webhook.startswith(("http://", "https://")) or len(webhook) > 2048
    ):
        raise SpecError("webhook must be an http:// or https:// URL")
    return RolloutSpec(
        to=to,
        steps=tuple(steps),
        analysis=analysis,
        shadow_first=shadow,
        sticky_header=sticky.lower() if sticky else None,
        on_success=on_success,
        reason=reason,
        webhook=webhook,
    )
