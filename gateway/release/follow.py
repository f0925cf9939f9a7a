"""Following registry aliases: ``champion`` moves -> hot-swap; ``challenger`` moves -> a canary.

A model's ``[mlflow]`` table names the aliases (docs/mlflow.md). Every ``registry_poll_s`` the
follower reads them; when one has moved since it last acted, it does what an operator would do
through the admin API, audited with actor ``mlflow-alias`` and the alias and version in the
history entry. It acts on *moves* only: a rollback by a person stays in force until the alias
moves again, also across restarts (the last move acted on is read back from the history).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.errors import GatewayError
from gateway.models import Model, ModelManager
from gateway.registry.base import RegistryError
from gateway.release.controller import ReleaseController
from routing.route import Route

log = logging.getLogger(__name__)

ACTOR = "mlflow-alias"


class AliasFollower:
    """Polls the registry's aliases of the models that follow one; owned by the app's lifespan."""

    def __init__(self, manager: ModelManager, controller: ReleaseController, interval_s: float) -> None:
        self._manager = manager
        self._controller = controller
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        #: (model, alias) -> the version last acted on (or seen in sync).
        self._seen: dict[tuple[str, str], int | None] = {}
        #: (model, alias) -> the seq of the latest history entry of a move acted on, when last read.
        self._acted_seq: dict[tuple[str, str], int] = {}

    def start(self) -> None:
        """Begin polling once the initial loads are done."""
        self._task = asyncio.create_task(self._run(), name="alias-follower")

    async def close(self) -> None:
        """Stop polling (an action under way is cancelled between its steps)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        await self._manager.wait_started()
        while True:
            try:
                await self.check()
            except Exception:  # any failure (a disk error, a bug) is logged; the next poll tries again
                log.exception("following registry aliases failed; retrying in %.0f s", self._interval_s)
            await asyncio.sleep(self._interval_s)

    async def check(self) -> None:
        """One round: every following model's aliases read, and moves acted on."""
        for model in self._manager.models():
            follow, canary = model.config.mlflow.follow, model.config.mlflow.canary_alias
            if not (follow or canary) or model.route is None:
                continue
            try:
                aliases = await asyncio.to_thread(self._manager.registry.aliases, model.name)
            except RegistryError as exc:
                log.warning("model %r: cannot read its aliases: %s", model.name, exc)
                continue
            try:
                # In a fleet, first what another replica may have done about this move (it is in the history).
                await self._controller.refresh(model.name)
                if follow:
                    await self._follow(model, follow, aliases.get(follow))
                if canary:
                    await self._canary(model, canary, aliases.get(canary))
            except GatewayError as exc:  # a failed load or save: the route is untouched, tried at the next poll
                log.error("model %r: following its aliases failed: %s", model.name, exc.message)
            except Exception:  # one model's failure must not stop the others
                log.exception("model %r: following its aliases failed", model.name)

    def _last_acted(self, model: Model, alias: str) -> tuple[int | None, int]:
        """The version this alias last moved to, as the history recorded it, and that entry's seq (None, 0: never)."""
        for entry in reversed(self._controller.entries(model.name)):
            if entry.actor == ACTOR and entry.details.get("alias") == alias:
                return int(entry.details["alias_version"]), entry.seq
        return None, 0

    def _moved(self, model: Model, alias: str, version: int, in_sync: bool) -> bool:
        """Whether the alias points somewhere it has not been acted on (or seen in sync) yet."""
        key = (model.name, alias)
        acted, seq = self._last_acted(model, alias)
        # First look, or a move acted on since by another replica of the fleet (the history is shared):
        # the history says where the alias was last followed to.
        if key not in self._seen or seq > self._acted_seq.get(key, 0):
            self._seen[key] = acted if acted is not None else (version if in_sync else None)
            self._acted_seq[key] = seq
        return self._seen[key] != version

    def _done(self, model: Model, alias: str, version: int) -> None:
        """Remember a move as handled; one that failed is tried again at the next poll."""
        self._seen[(model.name, alias)] = version

    async def _follow(self, model: Model, alias: str, version: int | None) -> None:
        route = model.route
        if version is None or route is None or not self._moved(model, alias, version, route.primary == version):
            return
        if route.primary != version:
            log.info("model %r: alias %r moved to version %d: swapping", model.name, alias, version)
            await self._controller.swap(
                model.name, version, ACTOR, f"MLflow alias {alias!r} moved to version {version}",
                {"alias": alias, "alias_version": str(version)},
            )  # fmt: skip
        self._done(model, alias, version)

    async def _canary(self, model: Model, alias: str, version: int | None) -> None:
        route = model.route
        if version is None or route is None:
            return
        if not self._moved(model, alias, version, version == route.primary or version in route.weights):
            return
        if version != route.primary:
            weight = model.config.mlflow.canary_weight
            log.info("model %r: alias %r moved to version %d: canary at %d%%", model.name, alias, version, weight)
            reason = f"MLflow alias {alias!r} moved to version {version}"
            await self._controller.load(model.name, version, ACTOR, reason)
            current = model.route
            assert current is not None
            shadow = {v: f for v, f in current.shadow.items() if v != version}
            canary = Route({current.primary: 100 - weight, version: weight}, 0, shadow, current.sticky_header)
            details = {"alias": alias, "alias_version": str(version)}
            await self._controller.set_route(model.name, canary, ACTOR, f"{reason}: canary at {weight}%", details)
        self._done(model, alias, version)
