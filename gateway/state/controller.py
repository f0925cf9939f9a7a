"""The release controller of a fleet: every change a compare-and-set in the shared store, and changes
made through other replicas applied here once what they name is READY (docs/operations.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gateway.errors import Conflict, GatewayError
from gateway.models import Model, ModelManager, VersionState
from gateway.release.controller import ReleaseController
from gateway.release.history import HistoryEntry, unloaded_versions
from gateway.release.shadow import ShadowRunner
from gateway.release.store import ModelRecord, StateStore
from gateway.state import SharedState, StoredModel

log = logging.getLogger(__name__)


class FleetController(ReleaseController):
    """A ``ReleaseController`` whose store is the fleet's; the state directory keeps a local copy."""

    def __init__(
        self,
        manager: ModelManager,
        store: StateStore,
        records: dict[str, ModelRecord],
        shared: SharedState,
        *,
        shadows: ShadowRunner | None = None,
        wall_clock: Callable[[], float] = time.time,
        local_copy: bool = True,
    ) -> None:
        super().__init__(manager, store, records, shadows=shadows, wall_clock=wall_clock)
        self._shared = shared
        # A host's workers share one state directory that the host store alone writes: no copies.
        self._local_copy = local_copy

    @property
    def shared(self) -> SharedState:
        """The fleet's shared state (the rollouts keep theirs beside it)."""
        return self._shared

    @asynccontextmanager
    async def _changing(self, name: str) -> AsyncIterator[None]:
        """The model's lock, then the fleet's latest change of it applied here: a change builds on it."""
        async with self._lock(name):
            stored = await self._shared.fetch(name)
            failure = await self._adopt(name, stored) if stored is not None else None
            if failure is not None:
                raise Conflict(
                    f"replica {self._shared.replica} cannot apply the fleet's change of model {name!r} yet"
                    f" ({failure}); it keeps serving its previous route: send the call to another replica"
                    " or fix the version"
                )
            yield

    async def refresh(self, name: str) -> None:
        """Apply the fleet's latest change of ``name`` here now (503 when the store is away)."""
        async with self._changing(name):
            pass

    async def converge(self, name: str, stored: StoredModel) -> str | None:
        """Apply a change another replica saved: load what it names, then route; why not, if it cannot."""
        async with self._lock(name):
            return await self._adopt(name, stored)

    async def _persist(self, name: str, record: ModelRecord, entry: HistoryEntry) -> None:
        """Compare-and-set on the seq the change was based on (409 if another won), then the local copy."""
        entry.replica = self._shared.replica
        await self._shared.commit(name, entry.seq - 1, record, entry)
        await self._save_copy({**self._records, name: record})

    def _applied(self, name: str) -> None:
        self._shared.applied(name)

    async def _adopt(self, name: str, stored: StoredModel) -> str | None:
        record = stored.record
        current = self._records.get(name)
        if current is not None and current.seq >= record.seq:
            return None
        try:
            model = await self._manager.discover(name)
        except GatewayError as exc:
            return exc.message
        # The route's versions must be READY here first: until then the previous route keeps serving.
        for version in sorted(record.route.versions):
            mv = model.versions.get(version)
            if mv is None or mv.state is not VersionState.READY:
                try:
                    await self._load_ready(model, version)
                except GatewayError as exc:
                    return exc.message
        for version in sorted(stored.loaded - record.route.versions):  # load intents: best effort
            if version not in model.versions:
                try:
                    await self._load_ready(model, version)
                except GatewayError as exc:
                    log.warning("model %r: the fleet's version %d cannot load here: %s", name, version, exc)
        self._records[name] = record
        await self._save_copy(self._records)
        before = model.route
        if before is None or before.to_json() != record.route.to_json():
            self._manager.set_route(model, record.route)
            log.info("model %r: applied the fleet's change %d: %s", name, record.seq, record.route.to_json())
            entry = record.history[-1] if record.history else None
            if entry is not None and entry.changes_route:
                self._notify(name, entry)  # a rollout here pauses on a change made elsewhere too
        # A model this replica has no record of yet: every unload in its history is news here.
        await self._unload_as_the_fleet_did(model, current.seq if current is not None else 0, stored)
        self._shared.applied(name)
        return None

    async def _unload_as_the_fleet_did(self, model: Model, since: int, stored: StoredModel) -> None:
        """Unload here what the fleet's changes after ``since`` unloaded and nothing later brought back.

        A version the current route names (even at weight 0), shadows or keeps as the rollback
        standby stays whatever the history says.
        """
        route = model.route.versions if model.route is not None else frozenset()
        for version in sorted(unloaded_versions(stored.record.history, since) - stored.loaded - route):
            if version in model.versions and self._role(model, version) is None:
                await self._manager.unload(model, version)
                log.info("model %r: unloaded version %d as the fleet's change did", model.name, version)

    async def _save_copy(self, records: dict[str, ModelRecord]) -> None:
        """The local copy of the fleet's state, served by a start while the store is away."""
        if not self._local_copy:
            return
        try:
            await asyncio.to_thread(self._store.save, records)
        except OSError as exc:  # saved in the fleet's store: the change stands
            log.error("the local copy of the fleet's state could not be saved: %s", exc)
