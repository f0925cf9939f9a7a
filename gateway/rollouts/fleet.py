"""Rollouts in a fleet (``state_store = "redis://..."``, or the workers of one host): one rollout per model.

The store is the fleet's ``StateBackend`` (Redis, or the supervisor's host store; key names below
are Redis's, which adds the ``tensorgate:`` prefix). The rollout itself lives in the store
(``tensorgate:rollout:{m}``, its JSON), so every replica answers
``GET .../rollouts/current`` the same and takes pause, resume, abort and promote. Each change is
a read-modify-write under a short store-wide lock (``rollout-lock:{m}``). One replica leads each
running rollout: it holds a lease (``rollout-lease:{m}``: SET NX PX with a token, renewed every
tick, extended and released only by its holder through a compare-and-act script); the leader
alone runs the analyses. If it dies, the lease expires and another replica takes it and goes on
from the saved step with a fresh window. Every replica publishes, each tick, the cumulative
counters of the versions in running rollouts (``rollout-figures:{replica}/{boot}``, expiring);
the leader's window is the sum over replicas of each one's counters minus that same replica's
counters at the window's start (a replica that joined or restarted meanwhile counts from the
next window). Drift PSI is the leader's own. Nothing here is on the inference path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson

from gateway.errors import NotFound, StoreFailed
from gateway.release.controller import ReleaseController
from gateway.release.history import HistoryEntry
from gateway.rollouts.analysis import Counters, Result, evaluate
from gateway.rollouts.events import Webhooks
from gateway.rollouts.figures import Figures, Snapshot, counters_from_json, counters_json, fleet_window
from gateway.rollouts.machine import Rollout
from gateway.rollouts.runner import ACTOR, RolloutManager, RolloutStore
from gateway.state.backend import STORE_ERRORS, StateBackend

log = logging.getLogger(__name__)

#: The set of models that ever had a rollout in the fleet.
ROLLOUTS = "rollouts"
#: Each replica's published counters: ``rollout-figures:{replica}/{boot}``.
FIGURES = "rollout-figures:"


class FleetRolloutManager(RolloutManager):
    """A ``RolloutManager`` whose rollouts live in the fleet's store, led by one replica at a time."""

    def __init__(
        self,
        controller: ReleaseController,
        figures: Figures,
        store: RolloutStore,
        state: StateBackend,
        replica: str,
        *,
        clock: Callable[[], float] = time.time,
        started: Callable[[], Awaitable[None]] | None = None,
        webhooks: Webhooks | None = None,
        tick_s: float = 0.5,
        lease_s: float = 3.0,
        figures_ttl_s: float = 5.0,
        lock_s: float = 30.0,
    ) -> None:
        super().__init__(controller, figures, store, clock=clock, started=started, webhooks=webhooks)
        self._state = state  # a connection of its own: owned (and closed) here
        self.replica = replica
        self._source = f"{replica}/{uuid.uuid4().hex[:8]}"  # a restart's counters start over: a new source
        self._token = f"{replica}/{uuid.uuid4().hex}"
        self._tick_s = tick_s
        self._lease_s = lease_s
        self._figures_ttl_s = figures_ttl_s
        self._lock_s = lock_s
        self._leading: set[str] = set()  # models whose rollout this replica leads
        self._created: set[str] = set()  # rollout ids started here (their first leader needs no restart)
        self._creating: set[str] = set()  # models whose rollout is being started here right now
        self._sums: Snapshot = {}  # the fleet's counters as read at the latest tick
        self._window: dict[str, Snapshot] = {}  # model -> the fleet's counters at its window's start
        self._window_at: dict[str, float] = {}  # model -> that window's start (a change anywhere moves it)
        self._supervisor: asyncio.Task[None] | None = None

    # -- lifespan ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin the tick: publish this replica's counters, take or renew leases, lead."""
        if self._webhooks is not None:
            self._webhooks.start()
        self._supervisor = asyncio.create_task(self._supervise(), name="fleet-rollouts")

    async def close(self) -> None:
        """Stop the tick and hand the leases back at once (another replica leads within a tick)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, *self._helpers, return_exceptions=True)
            self._supervisor = None
        for name in sorted(self._leading):
            with contextlib.suppress(TimeoutError, *STORE_ERRORS):
                await asyncio.wait_for(self._state.delete(self._lease_key(name), token=self._token), 1.0)
        self._leading.clear()
        with contextlib.suppress(TimeoutError, *STORE_ERRORS):
            await asyncio.wait_for(self._state.delete(FIGURES + self._source), 1.0)
        await self._state.close()
        if self._webhooks is not None:
            await self._webhooks.close()

    # -- keys and the store --------------------------------------------------------------------

    @staticmethod
    def _key(name: str) -> str:
        return "rollout:" + name

    @staticmethod
    def _lease_key(name: str) -> str:
        return "rollout-lease:" + name

    def _away(self, exc: BaseException) -> StoreFailed:
        return StoreFailed(f"the fleet's state store is unreachable ({exc or type(exc).__name__}): rollout unchanged",
                           retry_after_s=5)  # fmt: skip

    async def _read(self, name: str) -> Rollout | None:
        raw = await self._state.get(self._key(name))
        if raw is None:
            return None
        try:
            return Rollout.from_json(orjson.loads(raw))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("the fleet's rollout of model %r is invalid (%s): ignored", name, exc)
            return None

    async def _refresh(self, name: str) -> None:
        """The fleet's rollout of ``name`` replaces this replica's copy (a 503 when the store is away)."""
        try:
            rollout = await self._read(name)
        except STORE_ERRORS as exc:
            raise self._away(exc) from None
        if rollout is None:
            self._rollouts.pop(name, None)
            self._published.pop(name, None)
        else:
            self._rollouts[name] = rollout
            self._published[name] = rollout.to_json()

    @contextlib.asynccontextmanager
    async def _guard(self, name: str, wait_s: float | None = None) -> AsyncIterator[None]:
        """This replica's lock, then the fleet's lock on the model's rollout (503 after ``wait_s``), then its state."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            key, token = "rollout-lock:" + name, uuid.uuid4().hex
            deadline = time.monotonic() + (self._lock_s if wait_s is None else wait_s)
            try:
                while not await self._state.put(key, token.encode(), only_new=True, ttl_ms=int(self._lock_s * 1000)):
                    if time.monotonic() >= deadline:
                        raise StoreFailed(f"the rollout of {name!r} is being changed elsewhere: retry", retry_after_s=1)
                    await asyncio.sleep(0.02)
            except STORE_ERRORS as exc:
                raise self._away(exc) from None
            try:
                await self._refresh(name)
                yield
            finally:
                with contextlib.suppress(*STORE_ERRORS):
                    await self._state.delete(key, token=token)

    async def _save(self, name: str | None = None) -> None:
        """Write the changed rollout to the store (the fleet's copy is the one that counts)."""
        if name is None or name not in self._rollouts:
            return
        doc = orjson.dumps(self._rollouts[name].to_json())
        try:
            await self._state.put(self._key(name), doc)
            await self._state.add_member(ROLLOUTS, name)
        except STORE_ERRORS as exc:  # the leader's next tick writes it again
            log.error("the rollout of %r could not be saved to the state store: %s", name, exc)

    # -- reading and acting --------------------------------------------------------------------

    async def read(self, name: str) -> dict[str, Any]:
        """The fleet's rollout of ``name`` with the replica leading it (404 if it never had one)."""
        # Read, never adopted: this replica's copy changes only under the guard (a leader saving a
        # decision must not save a copy a concurrent GET put in its place: it would undo the decision).
        try:
            rollout = await self._read(name)
            raw = await self._state.get(self._lease_key(name))
        except STORE_ERRORS as exc:
            raise self._away(exc) from None
        if rollout is None:
            self._controller.history(name)  # 404 for an unknown model
            raise NotFound(f"model {name!r} has had no rollout")
        doc = rollout.to_json()
        holder = raw.decode() if raw is not None else None
        leader = holder.rsplit("/", 1)[0] if holder is not None and doc.get("ended_at") is None else None
        doc["fleet"] = {"leader": leader, "replica": self.replica}
        return doc

    async def create(self, name: str, doc: dict[str, Any], actor: str) -> dict[str, Any]:
        """Start a rollout for the fleet (409 while one runs anywhere in it); this replica leads it.

        The lease is taken before the rollout is saved: saved first, another replica's tick could
        find it running with no leader, take it and log a restart that never happened.
        """
        key = self._lease_key(name)
        leading = False
        try:
            leading = await self._state.put(key, self._token.encode(), only_new=True, ttl_ms=int(self._lease_s * 1000))
        except STORE_ERRORS as exc:
            log.warning("rollout of %r: cannot take its lease now (%s); a replica takes it at its next tick", name, exc)
        if leading:
            self._leading.add(name)
            self._window.pop(name, None)
        self._creating.add(name)  # this replica's own tick leaves it alone until its id is known
        try:
            result = await super().create(name, doc, actor)
        except BaseException:
            if leading:
                self._leading.discard(name)
                with contextlib.suppress(*STORE_ERRORS):
                    await self._state.delete(key, token=self._token)
            raise
        finally:
            self._creating.discard(name)
        self._created.add(str(result["id"]))
        return result

    async def control(self, name: str, action: str, actor: str, reason: str | None) -> dict[str, Any]:
        """Pause, resume, abort or promote through any replica; the leader sees it at its next tick."""
        if name not in self._rollouts:  # never seen here: adopt the fleet's (nothing here can be applying it)
            await self._refresh(name)
        return await super().control(name, action, actor, reason)  # its guard reads the fleet's again

    def _spawn(self, name: str, *, resume: bool) -> None:
        """No task per rollout: the tick leads the rollouts whose lease this replica holds."""

    def _route_changed(self, name: str, entry: HistoryEntry) -> None:
        """A manual route change made through this replica pauses the fleet's rollout (once, here)."""
        if entry.replica not in (None, self.replica) or entry.details.get("rollout") is not None:
            return
        task = asyncio.create_task(self._pause_for(name, entry), name=f"rollout-pause-{name}")
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def _pause_for(self, name: str, entry: HistoryEntry) -> None:
        try:
            async with self._guard(name):
                rollout = self._rollouts.get(name)
                if rollout is None or not rollout.active or entry.details.get("rollout") == rollout.id:
                    return
                why = f"manual route change (seq {entry.seq}: {entry.action} by {entry.actor})"
                await self._apply(rollout, rollout.pause(self._clock(), why, ACTOR), ACTOR)
        except (StoreFailed, *STORE_ERRORS) as exc:
            log.error("the rollout of %r could not be paused after a manual change: %s", name, exc)

    # -- the tick ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        if self._started is not None:
            await self._started()
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS as exc:  # leases lapse while away; the fleet resumes when it answers
                log.warning("rollouts: the state store is unreachable: %s", exc)
                self._leading.clear()
            except Exception:  # a bug must not stop every rollout: log, and the next tick tries again
                log.exception("rollouts: a tick failed")
            await asyncio.sleep(self._tick_s)

    async def _tick(self) -> None:
        names = await self._state.members(ROLLOUTS)
        active: dict[str, Rollout] = {}
        for name in names:
            rollout = await self._read(name)
            if rollout is not None and rollout.active:
                active[name] = rollout
        await self._publish(active)
        led = [await self._lead(name) for name in active]  # every lease renewed, none skipped
        for name in sorted((self._creating & self._leading) - set(active)):
            await self._lead(name)  # a rollout being started here keeps its lease while its candidate loads
        if any(led):
            await self._gather()
        for name in sorted(set(self._leading) - set(active) - self._creating):  # ended: hand the lease back
            await self._state.delete(self._lease_key(name), token=self._token)
            self._leading.discard(name)
        for name in sorted((self._leading & set(active)) - self._creating):
            await self._step(active[name])

    async def _publish(self, active: dict[str, Rollout]) -> None:
        """This replica's cumulative counters of every version in a running rollout."""
        doc: dict[str, dict[str, Any]] = {}
        for name, rollout in active.items():
            doc[name] = {
                str(v): counters_json(self._figures.snapshot(name, v)) for v in (rollout.spec.to, rollout.primary)
            }
        await self._state.put(FIGURES + self._source, orjson.dumps(doc), ttl_ms=int(self._figures_ttl_s * 1000))

    async def _gather(self) -> None:
        """Every live replica's published counters."""
        sums: Snapshot = {}
        for key, raw in (await self._state.scan(FIGURES)).items():
            source = key.removeprefix(FIGURES)
            try:
                doc = orjson.loads(raw)
                sums[source] = {
                    (m, int(v)): counters_from_json(c) for m, versions in doc.items() for v, c in versions.items()
                }
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        self._sums = sums

    async def _lead(self, name: str) -> bool:
        """Take or renew the lease of ``name``'s rollout; True when this replica leads it now."""
        key = self._lease_key(name)
        ms = int(self._lease_s * 1000)
        if name in self._leading:
            if await self._state.extend(key, self._token, ms):
                return True
            self._leading.discard(name)
            log.warning("rollout of %r: the lease was lost; another replica leads it", name)
            return False
        if not await self._state.put(key, self._token.encode(), only_new=True, ttl_ms=ms):
            return False
        self._leading.add(name)
        self._window.pop(name, None)  # a fresh window, from the counters gathered below
        return True

    async def _step(self, seen: Rollout) -> None:
        """Lead one tick: start the window if new, then the analysis when due."""
        name = seen.model
        # Most ticks change nothing: the fleet's lock is taken only for a takeover or an analysis.
        fresh = name not in self._window or self._window_at.get(name) != seen.window_started_at
        if fresh and (name in self._window or seen.id in self._created):
            self._new_window(seen)
            return
        if not fresh and not seen.due(self._clock()):
            return
        try:
            await self._lead_step(name)
        except StoreFailed as exc:  # the lock is held elsewhere (or Redis is away): the next tick tries again
            log.info("rollout of %r: %s", name, exc.message)

    async def _lead_step(self, name: str) -> None:
        # A short wait: a tick never stalls the other rollouts' lease renewals for long.
        async with self._guard(name, wait_s=2 * self._tick_s):
            rollout = self._rollouts.get(name)
            if rollout is None or not rollout.active:
                return
            if name not in self._window or self._window_at.get(name) != rollout.window_started_at:
                if name in self._window or rollout.id in self._created:
                    self._new_window(rollout)
                else:  # taken over from a replica that stopped: the same step again, a fresh window
                    log.info("rollout %s of %r: leading it now (replica %s)", rollout.id, name, self.replica)
                    self._created.add(rollout.id)
                    await self._apply(rollout, rollout.restarted(self._clock()), ACTOR)
                    if rollout.active and rollout.phase != "paused":
                        rollout.message = f"replica {self.replica} leads it now: {rollout.message}"
                        await self._save(name)
                return
            if rollout.due(now := self._clock()):
                await self._apply(rollout, rollout.analyse(now, self._evaluate(rollout, now)), ACTOR)

    # -- figures summed over replicas ----------------------------------------------------------

    def _new_window(self, rollout: Rollout) -> None:
        """The fleet's counters now (as of the latest tick) start the next window."""
        self._window[rollout.model] = {source: dict(figures) for source, figures in self._sums.items()}
        self._window_at[rollout.model] = rollout.window_started_at

    def _fleet_delta(self, rollout: Rollout, version: int) -> Counters:
        return fleet_window(self._window.get(rollout.model, {}), self._sums, (rollout.model, version))

    def _evaluate(self, rollout: Rollout, now: float) -> Result:
        candidate = self._fleet_delta(rollout, rollout.spec.to)
        primary = self._fleet_delta(rollout, rollout.primary)
        psi = self._figures.snapshot(rollout.model, rollout.spec.to).drift_psi  # the leader's own
        candidate = replace(candidate, drift_psi=psi)
        return evaluate(
            rollout.spec.analysis, candidate, primary, shadowing=rollout.shadowing,
            window_s=now - rollout.window_started_at,
        )  # fmt: skip
