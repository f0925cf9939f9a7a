"""The rollout state machine: phases, steps, analysis verdicts and decisions (pure, clock injected).

Every method takes ``now`` (seconds, the wall clock: a rollout outlives a restart) and returns
the effects the runner carries out in order: a route change (or none) and the audit entry that
says why. Nothing here awaits, sleeps or reads a clock, so the logic is tested step by step.

Phases (PRODUCT.md section 7): ``shadowing`` -> ``progressing`` (step by step) -> ``promoted``,
or ``aborted`` from any of them; ``paused`` holds the current weights until resumed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.rollouts.analysis import FAIL, PASS, Result
from gateway.rollouts.spec import RolloutSpec, parse_spec

SHADOWING, PROGRESSING, PAUSED, PROMOTED, ABORTED = "shadowing", "progressing", "paused", "promoted", "aborted"
PHASES = (SHADOWING, PROGRESSING, PAUSED, PROMOTED, ABORTED)
#: Analyses kept in a rollout's own record (the audit history has them all).
RECENT_ANALYSES = 20


@dataclass(frozen=True, slots=True)
class Effect:
    """One thing to do: apply ``route`` (a route document, or "promote"), then audit ``action``."""

    action: str
    details: dict[str, Any]
    #: None: nothing to change; a dict: set this route; "promote": swap to the candidate.
    route: dict[str, Any] | str | None = None
    #: The webhook event this is (started, step, paused, resumed, aborted, promoted), if any.
    event: str | None = None


@dataclass
class Rollout:
    """One rollout of one model: its spec and where it stands."""

    model: str
    spec: RolloutSpec
    #: The route in force when the rollout started (what an abort restores).
    before: dict[str, Any]
    actor: str = "admin"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    phase: str = PROGRESSING
    #: The step in force (-1: none yet, shadowing or about to start).
    step: int = -1
    #: While paused, the phase a resume returns to.
    resume_phase: str | None = None
    started_at: float = 0.0
    stage_started_at: float = 0.0
    next_analysis_at: float | None = None
    window_started_at: float = 0.0
    ended_at: float | None = None
    failures: int = 0
    analyses: int = 0
    recent: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    # -- reading -----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Not promoted or aborted yet."""
        return self.phase not in (PROMOTED, ABORTED)

    @property
    def primary(self) -> int:
        """The version serving most of the traffic before the rollout (ties: the higher)."""
        weights = {int(v): w for v, w in self.before["weights"].items()}
        return max(weights, key=lambda v: (weights[v], v))

    @property
    def weight(self) -> int:
        """The candidate's share of the traffic now (0 while shadowing or before the first step)."""
        if self.phase == PROMOTED:
            return 100
        if self.phase == ABORTED or self.step < 0:
            return 0
        return self.spec.steps[self.step].weight

    @property
    def shadowing(self) -> bool:
        """Whether the candidate is (or, paused, was) a shadow rather than taking traffic."""
        return (self.resume_phase if self.phase == PAUSED else self.phase) == SHADOWING

    def stage_s(self) -> float:
        """How long the current stage must last at least."""
        if self.step < 0:
            return self.spec.shadow_first.duration_s if self.spec.shadow_first else 0.0
        return self.spec.steps[self.step].pause_s

    def weights(self) -> dict[str, int]:
        """The candidate's and the primary's weights now."""
        to, primary = self.spec.to, self.primary
        if self.phase == ABORTED:
            return dict(self.before["weights"])
        if self.weight == 0:
            return dict(self.before["weights"])
        if self.phase == PROMOTED:
            return {str(to): 100}
        return {str(primary): 100 - self.weight, str(to): self.weight}

    def route_for_step(self) -> dict[str, Any]:
        """The route a stage sets: the candidate shadows, or has its step's weight beside the primary."""
        shadow = {v: f for v, f in (self.before.get("shadow") or {}).items() if int(v) != self.spec.to}
        sticky = self.spec.sticky_header or self.before.get("sticky_header")
        if self.step < 0:
            assert self.spec.shadow_first is not None
            shadow[str(self.spec.to)] = self.spec.shadow_first.fraction
            return {"weights": dict(self.before["weights"]), "shadow": shadow, "sticky_header": sticky}
        return {"weights": self.weights(), "shadow": shadow, "sticky_header": sticky}

    def to_json(self) -> dict[str, Any]:
        """What ``GET .../rollouts/current`` answers (and what is saved)."""
        return {
            "id": self.id,
            "model": self.model,
            "to": str(self.spec.to),
            "from": str(self.primary),
            "phase": self.phase,
            "resume_phase": self.resume_phase,
            "step": self.step,
            "steps": len(self.spec.steps),
            "weights": self.weights(),
            "failures": self.failures,
            "analyses": self.analyses,
            "last_analysis": self.recent[-1] if self.recent else None,
            "recent_analyses": list(self.recent),
            "message": self.message,
            "actor": self.actor,
            "reason": self.spec.reason,
            "started_at": self.started_at,
            "stage_started_at": self.stage_started_at,
            "next_analysis_at": self.next_analysis_at,
            "window_started_at": self.window_started_at,
            "ended_at": self.ended_at,
            "before": self.before,
            "spec": self.spec.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Rollout:
        """A saved rollout back (KeyError, TypeError or ValueError when misshapen)."""
        if doc["phase"] not in PHASES:
            raise ValueError(f"unknown phase {doc['phase']!r}")
        return cls(
            model=str(doc["model"]),
            spec=parse_spec(doc["spec"]),
            before=dict(doc["before"]),
            actor=str(doc.get("actor") or "admin"),
            id=str(doc["id"]),
            phase=doc["phase"],
            step=int(doc["step"]),
            resume_phase=doc.get("resume_phase"),
            started_at=float(doc["started_at"]),
            stage_started_at=float(doc["stage_started_at"]),
            next_analysis_at=None if doc.get("next_analysis_at") is None else float(doc["next_analysis_at"]),
            window_started_at=float(doc.get("window_started_at") or 0.0),
            ended_at=None if doc.get("ended_at") is None else float(doc["ended_at"]),
            failures=int(doc["failures"]),
            analyses=int(doc["analyses"]),
            recent=list(doc.get("recent_analyses") or []),
            message=str(doc.get("message") or ""),
        )

    # -- deciding ----------------------------------------------------------------------------

    def _details(self, **extra: Any) -> dict[str, Any]:
        return {"rollout": self.id, "phase": self.phase, "step": self.step, "weights": self.weights(), **extra}

    def _fresh_window(self, now: float) -> None:
        self.stage_started_at = now
        self.window_started_at = now
        self.next_analysis_at = now + self.spec.analysis.interval_s

    def start(self, now: float) -> list[Effect]:
        """Begin: shadow first if asked, else the first step."""
        self.started_at = now
        started = Effect("rollout-start", self._details(spec=self.spec.to_json()), event="started")
        if self.spec.shadow_first is not None:
            self.phase, self.step = SHADOWING, -1
            self._fresh_window(now)
            self.message = "shadowing"
            return [started, Effect("rollout-shadow", self._details(), self.route_for_step(), "step")]
        return [started, *self._enter_step(now, 0)]

    def _enter_step(self, now: float, step: int) -> list[Effect]:
        self.phase, self.step = PROGRESSING, step
        self._fresh_window(now)
        self.message = f"step {step + 1} of {len(self.spec.steps)}: {self.weight}%"
        return [Effect("rollout-step", self._details(), self.route_for_step(), "step")]

    def due(self, now: float) -> bool:
        """Whether an analysis is due."""
        at = self.next_analysis_at
        return self.active and self.phase != PAUSED and at is not None and now >= at

    def analyse(self, now: float, result: Result) -> list[Effect]:
        """Take one window's verdict: go on, hold, advance, promote, or abort."""
        if not self.due(now):
            return []
        self.analyses += 1
        limit = self.spec.analysis.failure_limit
        if result.verdict == FAIL:
            self.failures += 1
        elapsed = now - self.stage_started_at >= self.stage_s()
        if result.verdict == FAIL and self.failures >= limit:
            decision = "abort"
        elif result.verdict == FAIL:
            decision = "continue"  # failures below failure_limit are tolerated
        elif not elapsed:
            decision = "continue"
        elif result.verdict == PASS:
            decision = "advance"
        else:
            decision = "hold"  # the stage is over but the window could not be judged yet
        entry = {"at": now, "decision": decision, "failures": self.failures, **result.to_json()}
        self.recent = [*self.recent[-(RECENT_ANALYSES - 1) :], entry]
        effects = [Effect("rollout-analysis", self._details(analysis=entry, decision=decision))]
        self.window_started_at = now
        self.next_analysis_at = now + self.spec.analysis.interval_s
        if decision == "abort":
            why = f"analysis failed {self.failures} time(s) (failure_limit {limit}): {result.message}"
            return effects + self.abort(now, why, actor="rollout")
        if decision == "hold":
            self.message = f"holding: {result.message}"
        if decision == "advance":
            effects += self._advance(now)
        return effects

    def _advance(self, now: float) -> list[Effect]:
        following = self.step + 1
        if following < len(self.spec.steps):
            return self._enter_step(now, following)
        if self.spec.on_success == "promote":
            return self.promote(now, actor="rollout", why="every step passed its analysis")
        self.phase, self.resume_phase, self.next_analysis_at = PAUSED, PROGRESSING, None
        self.message = "every step passed its analysis; waiting for promote (on_success = pause)"
        return [Effect("rollout-pause", self._details(why=self.message), event="paused")]

    def pause(self, now: float, why: str, actor: str = "admin") -> list[Effect]:
        """Hold the current weights; no analysis until resumed. Nothing when not running."""
        if not self.active or self.phase == PAUSED:
            return []
        self.resume_phase, self.phase, self.next_analysis_at = self.phase, PAUSED, None
        self.message = f"paused: {why}"
        return [Effect("rollout-pause", self._details(why=why, by=actor), event="paused")]

    def resume(self, now: float, actor: str = "admin") -> list[Effect]:
        """Continue the paused stage with a fresh window, its route set again (a hand may have changed it)."""
        if self.phase != PAUSED:
            return []
        self.phase, self.resume_phase = self.resume_phase or PROGRESSING, None
        self._fresh_window(now)
        self.message = f"resumed by {actor}"
        route = self.route_for_step() if self.step >= 0 or self.phase == SHADOWING else None
        return [Effect("rollout-resume", self._details(by=actor), route, "resumed")]

    def restarted(self, now: float) -> list[Effect]:
        """After a restart: the same stage again with a fresh window (the counters started over)."""
        if not self.active:
            return []
        if self.phase != PAUSED:  # a paused rollout stays paused, its message as it was
            self._fresh_window(now)
            self.message = f"resumed after a restart at step {self.step + 1}" if self.step >= 0 else "resumed shadowing"
        return [Effect("rollout-restart", self._details())]

    def abort(self, now: float, why: str, actor: str = "admin") -> list[Effect]:
        """Restore the route before the rollout at once; the candidate gets nothing."""
        if not self.active:
            return []
        self.phase, self.resume_phase, self.next_analysis_at, self.ended_at = ABORTED, None, None, now
        self.message = f"aborted: {why}"
        restore = {k: self.before.get(k) for k in ("weights", "shadow", "sticky_header")}
        return [Effect("rollout-abort", self._details(why=why, by=actor), restore, "aborted")]

    def promote(self, now: float, actor: str = "admin", why: str = "promoted by hand") -> list[Effect]:
        """Give the candidate 100% (a swap: the old primary stays loaded as the standby)."""
        if not self.active:
            return []
        self.phase, self.resume_phase, self.next_analysis_at, self.ended_at = PROMOTED, None, None, now
        self.message = f"promoted: {why}"
        return [Effect("rollout-promote", self._details(why=why, by=actor, standby=str(self.primary)), "promote",
                       "promoted")]  # fmt: skip
