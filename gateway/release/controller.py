"""The release actions of the admin API: load, unload, route, swap, rollback, history.

Each model's actions run one at a time (a lock per model), so concurrent admin calls end in
the state of some serial order of them. Every action is recorded in the model's history
(sequence number, time, actor, action, reason, route before and after). A change is saved
first and applied only once saved: when the state directory cannot be written (disk full,
read-only) the call answers 503 and nothing changes, so what serves is always what a restart
restores. A route change becomes visible to requests in one reference swap.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from gateway.errors import BadRequest, Conflict, LoadFailed, LoadTimedOut, NotFound, StoreFailed
from gateway.metadata import version_status
from gateway.models import Model, ModelManager, ModelVersion, VersionState
from gateway.release.history import HistoryEntry, provenance_of
from gateway.release.shadow import ShadowRunner
from gateway.release.store import ModelRecord, StateStore
from routing.route import Route, RouteError

log = logging.getLogger(__name__)


class ReleaseController:
    """Serialises and audits every change to a model's versions and route."""

    def __init__(
        self,
        manager: ModelManager,
        store: StateStore,
        records: dict[str, ModelRecord],
        *,
        shadows: ShadowRunner | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._manager = manager
        self._shadows = shadows
        self._store = store
        self._records = records
        self._wall_clock = wall_clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._save_lock = asyncio.Lock()
        #: Called with (model, history entry) after every applied route change (rollouts pause on one).
        self._route_listeners: list[Callable[[str, HistoryEntry], None]] = []

    def add_route_listener(self, listener: Callable[[str, HistoryEntry], None]) -> None:
        """Call ``listener(model, entry)`` after each route change is saved and applied."""
        self._route_listeners.append(listener)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    @asynccontextmanager
    async def _changing(self, name: str) -> AsyncIterator[None]:
        """The model's lock, held by every change (gateway.state.controller adds the fleet's latest change)."""
        async with self._lock(name):
            yield

    async def refresh(self, name: str) -> None:
        """Apply changes of ``name`` made elsewhere: nothing to do for one replica, whose state is its own."""

    def seq(self, name: str) -> int:
        """The seq of the model's latest change applied here (0: none)."""
        record = self._records.get(name)
        return record.seq if record is not None else 0

    async def _persist(self, name: str, record: ModelRecord, entry: HistoryEntry) -> None:
        """Save the model's new record (blocking writes in a thread); OSError when it cannot be written."""
        await asyncio.to_thread(self._store.save, {**self._records, name: record})

    def _applied(self, name: str) -> None:
        """Called once a change of ``name`` is saved and applied here (a fleet reports it)."""

    def _notify(self, name: str, entry: HistoryEntry) -> None:
        for listener in self._route_listeners:
            try:
                listener(name, entry)
            except Exception:  # the change is saved and applied: a listener's bug must not undo that
                log.exception("model %r: a route listener failed", name)

    # -- reading -----------------------------------------------------------------------------

    def describe(self, model: Model) -> dict[str, Any]:
        """A model as ``GET /admin/models`` shows it."""
        versions = {str(number): version_status(mv) for number, mv in sorted(model.versions.items())}
        return {
            "name": model.name,
            "available": [str(v) for v in model.available],
            "versions": versions,
            "route": model.route.to_json() if model.route is not None else None,
            "standby": None if (s := self._standby(model)) is None else str(s),
            "shadow": self._shadow_stats(model),
            "error": model.config_error,
        }

    def _shadow_stats(self, model: Model) -> dict[str, Any]:
        if self._shadows is None:
            return {}
        return {
            str(version): stats.to_json()
            for (name, version), stats in sorted(self._shadows.stats.items())
            if name == model.name
        }

    def models(self) -> list[Model]:
        """Every model the manager knows."""
        return self._manager.models()

    def route(self, name: str) -> dict[str, Any]:
        """The model's current route, as the admin API shows it."""
        model = self._manager.model(name)
        if model.route is None:
            raise Conflict(f"model {name!r} has no route: {model.config_error or 'no version loaded'}")
        return model.route.to_json()

    def history(self, name: str) -> list[dict[str, Any]]:
        """The model's audit trail, oldest first, as the admin API shows it."""
        return [entry.to_json() for entry in self.entries(name)]

    def entries(self, name: str) -> list[HistoryEntry]:
        """The model's audit trail, oldest first."""
        self._manager.model(name)
        record = self._records.get(name)
        return list(record.history) if record is not None else []

    def repository_index(self) -> list[dict[str, str]]:
        """Triton's repository index: every available version and its state, in Triton's words."""
        index = []
        for model in self._manager.models():
            for version in model.available:
                mv = model.versions.get(version)
                failed = mv is None or mv.state is VersionState.FAILED
                state = "UNAVAILABLE" if failed or mv is None else mv.state.value
                entry = {"name": model.name, "version": str(version), "state": state}
                if mv is not None and mv.error:
                    entry["reason"] = mv.error
                index.append(entry)
        return index

    async def load_model(self, name: str, actor: str, reason: str | None) -> None:
        """Triton's repository load: the versions the route names, else the highest."""
        model = await self._manager.discover(name)
        versions = sorted(model.route.versions) if model.route is not None else [model.available[-1]]
        for version in versions:
            await self.load(name, version, actor, reason)

    async def unload_idle(self, name: str, actor: str, reason: str | None) -> None:
        """Triton's repository unload: every loaded version without a role; 409 if all have one."""
        model = self._manager.model(name)
        idle = [v for v in sorted(model.versions) if self._role(model, v) is None]
        if not idle and model.versions:
            raise Conflict(f"every loaded version of {name!r} serves, shadows or stands by: route away first")
        for version in idle:
            await self.unload(name, version, actor, reason)

    def _last_change(self, name: str) -> HistoryEntry | None:
        """The latest history entry that changed the route (loads and unloads of idle versions don't)."""
        record = self._records.get(name)
        history = record.history if record is not None else []
        changes = [e for e in history if e.before is not None and e.changes_route]
        return changes[-1] if changes else None

    def _standby(self, model: Model) -> int | None:
        """The previous primary kept for rollback: primary before the last route change, if unrouted now."""
        change = self._last_change(model.name)
        if change is None or model.route is None:
            return None
        # A promoted rollout names the old primary (before it, the candidate may have had the most weight).
        standby = change.details.get("standby")
        previous = int(standby) if isinstance(standby, str) else Route.from_json(change.before).primary
        return None if previous in model.route.versions else previous

    def _role(self, model: Model, version: int) -> str | None:
        """Why ``version`` must stay loaded (a sentence for a 409), or None when it may go."""
        route = model.route
        if route is not None and route.weights.get(version, 0) > 0:
            return f"version {version} still has {route.weights[version]}% of the traffic"
        if route is not None and version in route.shadow:
            return f"version {version} is a shadow of the current route"
        if self._standby(model) == version:
            return f"version {version} is the rollback standby; swap or route away from it first"
        return None

    # -- actions -----------------------------------------------------------------------------

    async def load(self, name: str, version: int, actor: str, reason: str | None) -> ModelVersion:
        """Fetch, load and warm ``version`` up; it gets no traffic. 502 when it fails to load."""
        model = await self._manager.discover(name)
        async with self._changing(name):
            was_loaded = version in model.versions
            mv = await self._load_ready(model, version)
            try:
                await self._record(
                    model, "load", actor=actor, reason=reason, before=model.route, details={"version": str(version)}
                )
            except StoreFailed:
                # Unsaved, so undone: a restart would not know this version was asked for.
                if not was_loaded and self._role(model, version) is None:
                    await self._manager.unload(model, version)
                raise
            return mv

    async def _load_ready(self, model: Model, version: int) -> ModelVersion:
        if model.config_error is not None:
            raise LoadFailed(f"model {model.name!r} cannot load: {model.config_error}")
        if version not in model.available:
            model.available = await asyncio.to_thread(self._manager.registry.versions, model.name)
            if version not in model.available:
                raise NotFound(f"version {version} of model {model.name!r} is not in the repository")
        mv = await self._manager.load(model.name, version)
        if mv.state is not VersionState.READY:
            # A slow remote or registry (the gateway's deadline passed) is a 504, anything else a 502.
            failed = LoadTimedOut if mv.failure == "timeout" else LoadFailed
            raise failed(f"version {version} of model {model.name!r} failed to load: {mv.error}")
        return mv

    async def unload(self, name: str, version: int, actor: str, reason: str | None) -> None:
        """Drain and unload ``version``; 409 while it has weight, shadows, or is the standby."""
        model = self._manager.model(name)
        async with self._changing(name):
            if version not in model.versions:
                raise NotFound(f"version {version} of model {name!r} is not loaded")
            role = self._role(model, version)
            if role is not None:
                raise Conflict(role)
            route = model.route
            seq = self._next_seq(model)
            after = route
            if route is not None and version in route.weights:  # weight 0: drop it from the route
                weights = {v: w for v, w in route.weights.items() if v != version}
                after = Route(weights, seq, dict(route.shadow), route.sticky_header)
            # Saved before anything changes: a failed save leaves the version loaded and routed.
            await self._record(
                model, "unload", actor=actor, reason=reason, before=route, after=after,
                details={"version": str(version)}, seq=seq,
            )  # fmt: skip
            await self._manager.unload(model, version)
            self._applied(name)  # told again once it is gone: a fleet's report no longer lists it

    async def set_route(
        self, name: str, doc: Route | Any, actor: str, reason: str | None, details: dict[str, Any] | None = None
    ) -> Route:
        """Replace the route (a Route, or the admin API's JSON document); every version it names must be READY."""
        model = self._manager.model(name)
        try:
            route = doc if isinstance(doc, Route) else Route.from_json(doc)
        except RouteError as exc:
            raise BadRequest(f"invalid route: {exc}") from None
        async with self._changing(name):
            self._check_ready(model, route)
            return await self._apply(model, route, "route", actor, reason, details=details)

    async def swap(
        self, name: str, version: int, actor: str, reason: str | None, details: dict[str, Any] | None = None
    ) -> Route:
        """Blue-green: load ``version`` if needed, then give it 100% in one step."""
        model = await self._manager.discover(name)
        async with self._changing(name):
            await self._load_ready(model, version)
            current = model.route
            shadow = {v: f for v, f in (current.shadow.items() if current else ()) if v != version}
            route = Route({version: 100}, 0, shadow, current.sticky_header if current else None)
            return await self._apply(model, route, "swap", actor, reason, details=details)

    async def rollback(self, name: str, to: int | None, actor: str, reason: str | None) -> Route:
        """Restore the route before the last change, or the one in force after change ``to``."""
        model = self._manager.model(name)
        async with self._changing(name):
            if to is None:
                change = self._last_change(name)
                if change is None:
                    raise Conflict(f"model {name!r} has no route change to roll back")
                target = change.before
            else:
                record = self._records.get(name)
                matches = [e for e in (record.history if record is not None else []) if e.seq == to]
                target = matches[0].after if matches else None
                if target is None:
                    raise Conflict(f"model {name!r} has no change {to} to roll back to")
            route = Route.from_json(target)
            for version in sorted(route.versions):
                await self._load_ready(model, version)  # reload what was unloaded since
            return await self._apply(model, route, "rollback", actor, reason)

    async def audit(self, name: str, action: str, actor: str, reason: str | None, details: dict[str, Any]) -> None:
        """Add a history entry that changes nothing (a rollout's analysis or decision, with its figures)."""
        model = self._manager.model(name)
        async with self._changing(name):
            if model.route is None:
                raise Conflict(f"model {name!r} has no route")
            await self._record(model, action, actor=actor, reason=reason, before=model.route, details=details)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _check_ready(model: Model, route: Route) -> None:
        for version in sorted(route.versions):
            mv = model.versions.get(version)
            if mv is None:
                raise NotFound(f"version {version} of model {model.name!r} is not loaded")
            if mv.state is not VersionState.READY:
                raise Conflict(f"version {version} of model {model.name!r} is {mv.state.value}, not READY")

    async def _apply(
        self,
        model: Model,
        route: Route,
        action: str,
        actor: str,
        reason: str | None,
        *,
        details: dict[str, Any] | None = None,
    ) -> Route:
        before = model.route
        seq = self._next_seq(model)
        route = route.with_seq(seq)
        await self._record(
            model, action, actor=actor, reason=reason, before=before, after=route, seq=seq, details=details
        )
        log.info("model %r route %s by %s: %s", model.name, action, actor, route.to_json())
        return route

    def _next_seq(self, model: Model) -> int:
        record = self._records.get(model.name)
        return (record.seq if record is not None else (model.route.seq if model.route else 0)) + 1

    async def _record(
        self,
        model: Model,
        action: str,
        *,
        actor: str,
        reason: str | None,
        before: Route | None,
        after: Route | None = None,
        details: dict[str, Any] | None = None,
        seq: int | None = None,
    ) -> None:
        """Save the history with a new entry, then make ``after`` (default: unchanged) the route.

        The save and the swap run as one shielded task: a caller that goes away mid-save
        cannot leave a saved change unapplied (or an applied one unsaved).
        """
        after = after if after is not None else model.route
        assert after is not None
        versions = set(after.versions)
        if details and "version" in details:
            versions.add(int(details["version"]))
        entry = HistoryEntry(
            seq=seq if seq is not None else self._next_seq(model),
            time=datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC).isoformat(),
            actor=actor,
            action=action,
            reason=reason,
            before=before.to_json() if before is not None else None,
            after=after.to_json(),
            details=dict(details or {}),
            provenance=provenance_of(model, versions),
        )
        task = asyncio.ensure_future(self._save_then_apply(model, entry, after))
        # A caller gone mid-save never reads the outcome: fetch it so asyncio does not warn.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(task)

    async def _save_then_apply(self, model: Model, entry: HistoryEntry, after: Route) -> None:
        async with self._save_lock:
            current = self._records.get(model.name)
            record = ModelRecord(after, [*(current.history if current is not None else ()), entry])
            try:
                await self._persist(model.name, record, entry)
            except OSError as exc:
                log.error("model %r: %s not applied, the state could not be saved: %s", model.name, entry.action, exc)
                raise StoreFailed(
                    f"{entry.action} of model {model.name!r} not applied: the state directory cannot be"
                    " written (disk full or read-only?); nothing changed",
                    retry_after_s=5,
                ) from None
            self._records[model.name] = record
            self._applied(model.name)
            if after is not model.route:
                self._manager.set_route(model, after)
                if entry.changes_route:
                    self._notify(model.name, entry)
