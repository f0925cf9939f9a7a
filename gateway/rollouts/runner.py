"""Runs rollouts: one task per running rollout, owned by the app's lifespan (docs/rollouts.md).

The task wakes at each analysis interval (or when an admin call changes the rollout), reads
the window's figures off the request path (gateway/rollouts/figures.py), lets the state
machine decide, and carries the decision out through the release controller's public
methods, so every step, analysis and decision lands in the model's audit history with its
figures. Rollouts are saved to ``<state_dir>/rollouts.json`` (atomic write + fsync) after
every change; at start-up a running one resumes at its step with a fresh window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from gateway.errors import BadRequest, Conflict, GatewayError, NotFound
from gateway.release.controller import ReleaseController
from gateway.release.history import HistoryEntry
from gateway.release.store import write_atomic
from gateway.rollouts.analysis import Counters, Result, evaluate
from gateway.rollouts.events import Webhooks, webhook_secret
from gateway.rollouts.figures import Figures
from gateway.rollouts.machine import Effect, Rollout
from gateway.rollouts.spec import SpecError, parse_spec

log = logging.getLogger(__name__)

ROLLOUTS_FILE = "rollouts.json"
FORMAT = 1
ACTOR = "rollout"


class RolloutStore:
    """Every model's latest rollout in ``<state_dir>/rollouts.json``; calls block (use a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / ROLLOUTS_FILE

    def load(self) -> dict[str, Rollout]:
        """The saved rollouts; an unreadable file or entry is logged and skipped, never fatal."""
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): starting without saved rollouts", self.path, exc)
            return {}
        entries = doc.get("rollouts") if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            log.error("%s is not a rollouts document: ignored", self.path)
            return {}
        found = {}
        for name, entry in entries.items():
            try:
                found[name] = Rollout.from_json(entry)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("saved rollout of model %r is invalid (%s): ignored", name, exc)
        return found

    def save(self, rollouts: dict[str, dict[str, Any]]) -> None:
        """Write every rollout atomically and durably."""
        doc = {"format": FORMAT, "rollouts": rollouts}
        write_atomic(self.directory, ROLLOUTS_FILE, json.dumps(doc, indent=1, sort_keys=True).encode())


class RolloutManager:
    """Starts, steps, analyses, pauses, resumes, aborts and promotes rollouts; one per model at a time."""

    def __init__(
        self,
        controller: ReleaseController,
        figures: Figures,
        store: RolloutStore,
        *,
        clock: Callable[[], float] = time.time,
        started: Callable[[], Awaitable[None]] | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        self._controller = controller
        self._figures = figures
        self._store = store
        self._clock = clock
        self._started = started
        self._webhooks = webhooks
        self._rollouts: dict[str, Rollout] = {}
        #: What GET .../current shows: each rollout as of its last applied change (never mid-change).
        self._published: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._helpers: set[asyncio.Task[None]] = set()
        self._baselines: dict[str, tuple[Counters, Counters]] = {}
        self._save_lock = asyncio.Lock()
        controller.add_route_listener(self._route_changed)

    # -- lifespan ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the saved rollouts; running ones resume (once the models have loaded)."""
        if self._webhooks is not None:
            self._webhooks.start()
        self._rollouts = await asyncio.to_thread(self._store.load)
        self._published = {name: r.to_json() for name, r in self._rollouts.items()}
        for name, rollout in self._rollouts.items():
            if rollout.active:
                self._spawn(name, resume=True)

    async def close(self) -> None:
        """Stop every rollout task and save where each stands (a restart resumes them)."""
        tasks = [*self._tasks.values(), *self._helpers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._helpers.clear()
        if tasks:  # a task stopped between a route change and its save: save what it decided
            await self._save()
        if self._webhooks is not None:
            await self._webhooks.close()

    # -- reading -----------------------------------------------------------------------------

    def current(self, name: str) -> dict[str, Any]:
        """The model's running rollout, else its last one; 404 if it never had one."""
        published = self._published.get(name)
        if published is None:
            self._controller.history(name)  # 404 for an unknown model, 400 for a bad name
            raise NotFound(f"model {name!r} has had no rollout")
        return published

    async def read(self, name: str) -> dict[str, Any]:
        """``GET .../rollouts/current`` (a fleet reads its store)."""
        return self.current(name)

    # -- actions -----------------------------------------------------------------------------

    async def create(self, name: str, doc: dict[str, Any], actor: str) -> dict[str, Any]:
        """Start a rollout of ``name``: 409 while another runs; the candidate is loaded and warmed first."""
        try:
            spec = parse_spec({k: v for k, v in doc.items() if k != "actor"})
        except SpecError as exc:
            raise BadRequest(f"invalid rollout: {exc}") from None
        async with self._guard(name):
            running = self._rollouts.get(name)
            if running is not None and running.active:
                raise Conflict(f"model {name!r} already has a rollout ({running.id}, {running.phase}): abort it first")
            before = self._controller.route(name)  # 409 when the model has no route
            weights = {int(v): w for v, w in before["weights"].items()}
            if weights.get(spec.to, 0) > 0:
                raise Conflict(f"version {spec.to} already takes traffic: a rollout needs a new candidate")
            await self._controller.load(name, spec.to, actor, spec.reason or "rollout candidate")
            before = self._controller.route(name)
            rollout = Rollout(name, spec, {k: before.get(k) for k in ("weights", "shadow", "sticky_header")}, actor)
            self._rollouts[name] = rollout
            await self._apply(rollout, rollout.start(self._clock()), actor)
        self._spawn(name, resume=False)
        return rollout.to_json()

    async def control(self, name: str, action: str, actor: str, reason: str | None) -> dict[str, Any]:
        """``pause``, ``resume``, ``abort`` or ``promote`` the running rollout; 409 when none runs."""
        if name not in self._rollouts:
            self.current(name)
        async with self._guard(name):
            rollout = self._rollouts[name]
            if not rollout.active:
                raise Conflict(f"the rollout of {name!r} has ended ({rollout.phase}): nothing to {action}")
            now = self._clock()
            why = reason or f"{action} by {actor}"
            if action == "pause":
                effects = rollout.pause(now, why, actor)
            elif action == "resume":
                if rollout.phase != "paused":
                    raise Conflict(f"the rollout of {name!r} is {rollout.phase}, not paused")
                effects = rollout.resume(now, actor)
            elif action == "abort":
                effects = rollout.abort(now, why, actor)
            else:
                effects = rollout.promote(now, actor, why)
            await self._apply(rollout, effects, actor)
        self._wake(name)
        return rollout.to_json()

    @contextlib.asynccontextmanager
    async def _guard(self, name: str) -> AsyncIterator[None]:
        """Held while a rollout of ``name`` changes (a fleet adds its store-wide lock)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            yield

    # -- the task ----------------------------------------------------------------------------

    def _spawn(self, name: str, *, resume: bool) -> None:
        # The task holds its own rollout and wake-up event: a task still winding down after an
        # abort never touches the next rollout of the same model.
        wake = self._wakes[name] = asyncio.Event()
        task = asyncio.create_task(self._run(self._rollouts[name], wake, resume), name=f"rollout-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._tasks.get(name) is done and self._tasks.pop(name))

    def _wake(self, name: str) -> None:
        wake = self._wakes.get(name)
        if wake is not None:
            wake.set()

    async def _run(self, rollout: Rollout, wake: asyncio.Event, resume: bool) -> None:
        try:
            if resume:
                if self._started is not None:
                    await self._started()
                async with self._guard(rollout.model):
                    await self._apply(rollout, rollout.restarted(self._clock()), ACTOR)
            await self._loop(rollout, wake)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave the model half-rolled: say so loudly, keep serving
            log.exception("rollout %s of model %r stopped by an error", rollout.id, rollout.model)

    async def _loop(self, rollout: Rollout, wake: asyncio.Event) -> None:
        while True:
            if not rollout.active:
                return
            if rollout.due(self._clock()):
                async with self._guard(rollout.model):
                    if rollout.due(now := self._clock()):
                        await self._apply(rollout, rollout.analyse(now, self._evaluate(rollout, now)), ACTOR)
                continue
            wake.clear()
            at = rollout.next_analysis_at
            delay = None if at is None else max(0.0, at - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)

    def _snapshots(self, rollout: Rollout) -> tuple[Counters, Counters]:
        return (
            self._figures.snapshot(rollout.model, rollout.spec.to),
            self._figures.snapshot(rollout.model, rollout.primary),
        )

    def _evaluate(self, rollout: Rollout, now: float) -> Result:
        candidate, primary = self._snapshots(rollout)
        base = self._baselines.get(rollout.model)
        if base is not None:
            candidate, primary = candidate.minus(base[0]), primary.minus(base[1])
        return evaluate(
            rollout.spec.analysis, candidate, primary, shadowing=rollout.shadowing,
            window_s=now - rollout.window_started_at,
        )  # fmt: skip

    # -- carrying decisions out --------------------------------------------------------------

    async def _apply(self, rollout: Rollout, effects: list[Effect], actor: str) -> None:
        """Each effect's route change and audit entry in order; then save, and start a fresh window."""
        reason = rollout.spec.reason
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            details = {**effect.details, "rollout_action": effect.action}
            route = effect.route
            if isinstance(route, dict) and (self._in_force(rollout.model, route) or self._overtaken(rollout, effect)):
                route = None  # nothing to change, or a person paused it while this was decided: theirs stands
            try:
                if route == "promote":
                    await self._controller.swap(rollout.model, rollout.spec.to, actor, reason, details=details)
                elif isinstance(route, dict):
                    await self._controller.set_route(rollout.model, route, actor, reason, details=details)
                else:
                    await self._controller.audit(rollout.model, effect.action, actor, reason, details)
            except GatewayError as exc:
                log.error("rollout %s of %r: %s failed: %s", rollout.id, rollout.model, effect.action, exc.message)
                if effect.action == "rollout-abort":
                    rollout.message += f" (restoring the route failed: {exc.message}; roll back by hand)"
                elif effect.route is not None:
                    pending = rollout.abort(self._clock(), f"{effect.action} failed: {exc.message}", ACTOR)
                continue
            if effect.event is not None and self._webhooks is not None:
                self._webhooks(rollout.to_json(), effect.event)
        self._new_window(rollout)
        self._published[rollout.model] = rollout.to_json()
        await self._save(rollout.model)

    def _new_window(self, rollout: Rollout) -> None:
        """The counters now are the next analysis window's start."""
        self._baselines[rollout.model] = self._snapshots(rollout)

    def _in_force(self, name: str, route: dict[str, Any]) -> bool:
        """Whether ``route`` is the model's route already (weights, shadows and sticky header)."""
        try:
            current = self._controller.route(name)
        except GatewayError:
            return False
        keys = ("weights", "shadow", "sticky_header")
        return {k: current.get(k) or None for k in keys} == {k: route.get(k) or None for k in keys}

    @staticmethod
    def _overtaken(rollout: Rollout, effect: Effect) -> bool:
        """A step decided before a manual change paused the rollout: not applied (resume applies it)."""
        return rollout.phase == "paused" and effect.action in ("rollout-step", "rollout-shadow")

    async def _save(self, name: str | None = None) -> None:
        """Save every rollout (``name``: the one that changed; the local file holds them all)."""
        async with self._save_lock:
            snapshot = {name: r.to_json() for name, r in sorted(self._rollouts.items())}
            try:
                await asyncio.to_thread(self._store.save, snapshot)
            except OSError as exc:  # the routes themselves are saved by the controller; say so and go on
                log.error("rollouts could not be saved to %s: %s", self._store.path, exc)

    def _route_changed(self, name: str, entry: HistoryEntry) -> None:
        """A route change not made by the rollout pauses it (a person took the wheel)."""
        rollout = self._rollouts.get(name)
        if rollout is None or not rollout.active or entry.details.get("rollout") == rollout.id:
            return
        why = f"manual route change (seq {entry.seq}: {entry.action} by {entry.actor})"
        effects = rollout.pause(self._clock(), why, "rollout")
        if not effects:
            return
        # Called inside the controller's save: audit from a task of our own, after it returns.
        task = asyncio.create_task(self._apply_later(rollout, effects), name=f"rollout-pause-{name}")
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def _apply_later(self, rollout: Rollout, effects: list[Effect]) -> None:
        async with self._guard(rollout.model):
            await self._apply(rollout, effects, ACTOR)
        self._wake(rollout.model)


def rollout_manager(
    state_dir: Path,
    controller: ReleaseController,
    figures: Figures,
    *,
    started: Callable[[], Awaitable[None]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RolloutManager:
    """The app's rollout manager, saving to ``state_dir``, with its webhook sender (the lifespan owns both)."""
    env = os.environ if environ is None else environ
    webhooks = Webhooks(partial(webhook_secret, state_dir, env))
    from gateway.state.controller import FleetController  # fleet mode only (a module-level import would cycle)
    from gateway.state.fleet import Fleet

    if isinstance(controller, FleetController) and isinstance(controller.shared, Fleet):
        from gateway.rollouts.fleet import FleetRolloutManager

        fleet = controller.shared
        return FleetRolloutManager(controller, figures, RolloutStore(state_dir), fleet.connect(), fleet.replica,
                                   started=started, webhooks=webhooks)  # fmt: skip
    return RolloutManager(controller, figures, RolloutStore(state_dir), started=started, webhooks=webhooks)
