"""This replica's part in a fleet sharing one release state (docs/operations.md, fleet mode).

The store is a ``StateBackend``: Redis for a fleet of pods, the supervisor's host store for the
workers of one host (gateway/host/state_server.py); the logic below is the same for both.

Changes go through the release controller, which asks ``Fleet.commit`` for a compare-and-set on
the model's seq. Other replicas learn of a change from the pub/sub message every commit sends,
and from a reconcile every ``reconcile_s`` for messages missed (a reconnect, a restart); they
apply a route only once its versions are READY here (loading them from this replica's
registry), and until then keep the previous route and report the model as lagging. Each
replica reports its applied seq and version states under a key that expires unless refreshed
(``ttl_s``): the live replicas are those whose key exists. No call here is on the inference
path: when Redis is away, requests are served from the routes already applied, admin changes
answer 503, and the reconcile loop catches up once Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.errors import Conflict, StoreFailed
from gateway.models import ModelManager
from gateway.release.history import HistoryEntry
from gateway.release.store import ModelRecord
from gateway.state import StoredModel
from gateway.state.backend import STORE_ERRORS, StateBackend, StoreWriteFailed
from gateway.state.controller import FleetController

log = logging.getLogger(__name__)

#: How long a host's worker waits, at most, for every worker to apply a change before answering.
SETTLE_S = 30.0
#: Seconds before a failed apply of the same change is tried again by the periodic reconcile.
RETRY_FAILED_S = 15.0


class Fleet:
    """Shared release state: compare-and-set commits, convergence, replica reports; owned by the lifespan."""

    def __init__(
        self,
        backend: StateBackend,
        replica: str,
        *,
        heartbeat_s: float = 1.0,
        ttl_s: float = 5.0,
        reconcile_s: float = 2.0,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        wait_always: bool = False,
        poll_s: float = 0.05,
    ) -> None:
        self.replica = replica
        #: Every admin change answers once every live replica applied it, as with ``?wait=all`` (a host's workers).
        self.wait_always = wait_always
        self._poll_s = poll_s  # how often ``wait_all`` reads the replicas' reports
        self.url = backend.url
        self._backend = backend  # owned: closed by ``close``
        self._heartbeat_s = heartbeat_s
        self._ttl_s = ttl_s
        self._reconcile_s = reconcile_s
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        #: Whether the store answered the latest call (``tensorgate_state_store_up``).
        self.up = False
        #: The store was away at start-up: serving the local copy of the last state.
        self.cached = False
        self._controller: FleetController | None = None
        self._manager: ModelManager | None = None
        self._intents: dict[str, frozenset[int]] = {}
        self._unseen: set[str] = set()  # models the store has no record of (their first commit seeds it)
        self._lagging: dict[str, str] = {}
        self._failed: dict[str, tuple[int, float]] = {}  # model -> (seq, when) of the latest failed apply
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._report_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def connect(self) -> StateBackend:
        """A connection of its own to the same store (the fleet's rollouts; the caller closes it)."""
        return self._backend.connect()

    # -- start-up and shutdown ---------------------------------------------------------------

    async def open(self, local: dict[str, ModelRecord]) -> dict[str, ModelRecord]:
        """The records to start from: the store's where it has them, else ``local`` (the cached copy)."""
        records = dict(local)
        try:
            for name in await self._backend.seqs():
                stored = await self._backend.model(name)
                if stored is not None:
                    records[name] = stored.record
                    self._intents[name] = stored.loaded
            # Live from now on, at the seqs it starts from: a change committed before its first full
            # report is waited for (``?wait=all``), never missed.
            models: dict[str, Any] = {n: {"seq": r.seq, "lagging": None, "versions": {}} for n, r in records.items()}
            doc = {"replica": self.replica, "time": self._wall_clock(), "serving_cached_state": False, "models": models}
            await self._backend.report(self.replica, doc, self._ttl_s)
            self.up = True
        except STORE_ERRORS as exc:
            self.cached = True
            log.error(
                "the state store %s is unreachable (%s): serving the last state saved locally; "
                "admin changes answer 503 until it is back",
                self.url,
                exc,
            )
        return records

    def start(self, controller: FleetController, manager: ModelManager) -> None:
        """Begin listening, reconciling and reporting."""
        self._controller = controller
        self._manager = manager
        self._tasks = [
            asyncio.create_task(self._listen(), name="fleet-listen"),
            asyncio.create_task(self._reconcile_loop(), name="fleet-reconcile"),
            asyncio.create_task(self._report_loop(), name="fleet-report"),
        ]

    async def close(self) -> None:
        """Stop the tasks, withdraw this replica's report (best effort) and close the connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await asyncio.wait_for(self._backend.withdraw(self.replica), 1.0)
        except (TimeoutError, *STORE_ERRORS):
            pass
        await self._backend.close()

    # -- what the controller asks (gateway.state.SharedState) --------------------------------

    async def fetch(self, name: str) -> StoredModel | None:
        """The model's state in the store; 503 when the store is away."""
        try:
            stored = await self._backend.model(name)
        except STORE_ERRORS as exc:
            raise self._away("changes", exc) from None
        self._mark_up()
        if stored is None:
            self._unseen.add(name)
        else:
            self._unseen.discard(name)
            self._intents[name] = stored.loaded
        return stored

    async def commit(self, name: str, expected: int, record: ModelRecord, entry: HistoryEntry) -> None:
        """Compare-and-set on the model's seq: 409 when another replica's change came first."""
        loaded = set(self._intents.get(name, frozenset()))
        if entry.action == "load":
            loaded.add(int(entry.details["version"]))
        elif entry.action == "unload":
            loaded.discard(int(entry.details["version"]))
        try:
            held = await self._backend.commit(name, expected, record, entry, loaded, seed=name in self._unseen)
        except STORE_ERRORS as exc:
            raise self._away(entry.action, exc) from None
        self._mark_up()
        if held is not None:
            raise Conflict(
                f"model {name!r} changed meanwhile through another replica (the fleet is at change {held}, "
                f"this {entry.action} was based on change {expected}): nothing changed; read the route and retry"
            )
        self._unseen.discard(name)
        self._intents[name] = frozenset(loaded)

    def applied(self, name: str) -> None:
        """Report this replica's state at once (``?wait=all`` waits for it)."""
        self._lagging.pop(name, None)
        self._report_now.set()

    def _away(self, action: str, exc: BaseException) -> StoreFailed:
        if isinstance(exc, StoreWriteFailed):  # the store answers: only its disk failed
            return StoreFailed(f"{action} not applied: {exc}; nothing changed", retry_after_s=5)
        if self.up:
            log.error("the state store %s is unreachable: %s", self.url, exc)
        self.up = False
        return StoreFailed(
            f"{action} not applied: the fleet's state store ({self.url}) is unreachable ({exc or type(exc).__name__}); "
            "nothing changed, and every replica keeps serving the routes it has",
            retry_after_s=5,
        )

    def _mark_up(self) -> None:
        if not self.up:
            log.info("the state store %s answers again", self.url)
        self.up = True

    # -- the admin API -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The store as ``GET /admin/models`` shows it."""
        return {"url": self.url, "up": self.up, "replica": self.replica, "serving_cached_state": self.cached}

    async def reports(self) -> list[dict[str, Any]]:
        """Every live replica's report; 503 when the store is away."""
        try:
            reports = await self._backend.replicas()
        except STORE_ERRORS as exc:
            raise self._away("reading the replicas", exc) from None
        self._mark_up()
        return reports

    async def settle(self, name: str, seq: int) -> list[dict[str, Any]]:
        """On a host's workers, wait until every live one applied change ``seq`` (``SETTLE_S`` at most)."""
        return await self.wait_all(name, seq, SETTLE_S) if self.wait_always else []

    async def wait_all(self, name: str, seq: int, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until every live replica applied change ``seq`` of ``name``; the replicas still pending."""
        deadline = self._monotonic() + timeout_s
        while True:
            pending = []
            for report in await self.reports():
                state = report.get("models", {}).get(name) or {}
                if int(state.get("seq", 0)) < seq:
                    pending.append({"replica": report.get("replica"), "seq": state.get("seq", 0),
                                    "lagging": state.get("lagging")})  # fmt: skip
            if not pending or self._monotonic() >= deadline:
                return pending
            await asyncio.sleep(self._poll_s)

    # -- convergence -------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe to the change messages; on any failure subscribe again (the reconcile covers the gap)."""
        while True:
            try:
                async for doc in self._backend.changes():
                    if doc is None:
                        self._wake.set()  # (re)subscribed: reconcile once for what was missed
                        continue
                    name = doc.get("model")
                    if isinstance(name, str) and doc.get("replica") != self.replica:
                        self._pending.add(name)
                        self._wake.set()
            except STORE_ERRORS:
                pass
            await asyncio.sleep(min(1.0, self._reconcile_s))

    async def _reconcile_loop(self) -> None:
        assert self._manager is not None
        await self._manager.wait_started()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._reconcile_s)
            self._wake.clear()
            names, self._pending = self._pending, set()
            try:
                await self.reconcile(names or None)
                if self.cached:
                    log.info("the state store %s answers: the fleet's state replaces the cached one", self.url)
                    self.cached = False
            except STORE_ERRORS as exc:
                self._pending |= names
                if self.up:
                    log.error("the state store %s is unreachable (%s): serving the routes applied here", self.url, exc)
                self.up = False
            except Exception:  # a bug must not end convergence: log, and the next round tries again
                log.exception("reconciling with the state store failed")

    async def reconcile(self, names: set[str] | None = None) -> None:
        """Apply the store's changes of ``names`` (None: every model whose seq is ahead, or lagging)."""
        assert self._controller is not None
        controller = self._controller
        if names is None:
            seqs = await self._backend.seqs()
            self._mark_up()
            names = {n for n, seq in seqs.items() if seq > controller.seq(n)} | set(self._lagging)
            forced = False
        else:
            forced = True
        for name in sorted(names):
            stored = await self._backend.model(name)
            self._mark_up()
            if stored is None:
                continue
            self._intents[name] = stored.loaded
            failed = self._failed.get(name)
            if (not forced and failed is not None and failed[0] == stored.record.seq
                    and self._monotonic() - failed[1] < RETRY_FAILED_S):  # fmt: skip
                continue
            failure = await controller.converge(name, stored)
            if failure is None:
                self._failed.pop(name, None)
                if controller.seq(name) >= stored.record.seq:
                    self._lagging.pop(name, None)
            else:
                log.warning("model %r: the fleet's change %d not applied here: %s", name, stored.record.seq, failure)
                self._failed[name] = (stored.record.seq, self._monotonic())
                self._lagging[name] = f"change {stored.record.seq} not applied: {failure}"
                self._report_now.set()

    # -- reports -------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What this replica tells the fleet: each model's applied seq, lag, and version states."""
        assert self._manager is not None and self._controller is not None
        models = {}
        for model in self._manager.models():
            models[model.name] = {
                "seq": self._controller.seq(model.name),
                "lagging": self._lagging.get(model.name),
                "versions": {str(v): mv.state.value for v, mv in sorted(model.versions.items())},
            }
        for name, why in self._lagging.items():  # a model this replica does not even have
            models.setdefault(name, {"seq": self._controller.seq(name), "lagging": why, "versions": {}})
        return {
            "replica": self.replica,
            "time": self._wall_clock(),
            "serving_cached_state": self.cached,
            "models": models,
        }

    async def _report_loop(self) -> None:
        while True:
            try:
                await self._backend.report(self.replica, self.report(), self._ttl_s)
                self._mark_up()
            except STORE_ERRORS as exc:
                if self.up:
                    log.error("the state store %s is unreachable (%s): serving the routes applied here", self.url, exc)
                self.up = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self._heartbeat_s)
            self._report_now.clear()
