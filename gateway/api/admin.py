"""The admin API (``/admin``) and Triton's repository extension, behind the bearer token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.body import BodyHeaders, read_body
from gateway.api.responses import json_response, send_error
from gateway.console.stats import StatsReader
from gateway.core import CoreSlot
from gateway.errors import BadRequest, NotFound, PayloadTooLarge, Unavailable, UnsupportedMediaType
from gateway.registry.names import check_model_name, parse_version
from gateway.release.controller import ReleaseController
from gateway.release.overrides import refuse_load_overrides
from gateway.rollouts.runner import RolloutManager
from gateway.state.fleet import Fleet

ADMIN_BODY_LIMIT = 64 * 1024
#: ``?wait=all``: how long a change waits for every live replica by default, and at most (``timeout=``).
WAIT_TIMEOUT_S = 30.0
WAIT_TIMEOUT_MAX_S = 600.0
_ACTOR_LIMIT = 256


@dataclass(frozen=True, slots=True)
class _Call:
    """What every changing admin call carries: its target, its body, and the audit fields."""

    model: str
    version: int  # 0 where the path names no version
    doc: dict[str, Any]
    actor: str
    reason: str | None


class RequireToken:
    """ASGI middleware: 401 (the same body whatever was wrong) unless the bearer token matches."""

    def __init__(self, app: ASGIApp, slot: CoreSlot) -> None:
        self.app = app
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the request through only with the right token."""
        if scope["type"] == "http":
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            core = self.slot.current  # no core yet: no token yet, so everything is denied
            if core is None or not core.auth.allows(header):
                await send_error(send, 401, "unauthorized", {"WWW-Authenticate": 'Bearer realm="tensorgate-admin"'})
                return
        await self.app(scope, receive, send)


class AdminEndpoints:
    """Handlers of the admin API; they serve from the core in ``slot`` (set by the app's lifespan)."""

    def __init__(self, slot: CoreSlot, stats: StatsReader | None = None) -> None:
        self._slot = slot
        self._stats = stats  # the console's live figures (gateway.console.stats)

    @property
    def rollouts(self) -> RolloutManager:
        """The rollout manager; 503 until start-up has built it."""
        return self._slot.core.rollouts

    @property
    def controller(self) -> ReleaseController:
        """The release controller; 503 until start-up has built it."""
        return self._slot.core.controller

    @property
    def fleet(self) -> Fleet | None:
        """The shared state of a fleet (None for one replica); 503 until start-up has built it."""
        return self._slot.core.fleet

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        headers = BodyHeaders.parse(request.scope)
        raw = await read_body(request.receive, headers, ADMIN_BODY_LIMIT)
        if not raw.strip():
            return {}
        media = headers.content_type.partition(b";")[0].strip().lower()
        if media not in (b"", b"application/json"):
            raise UnsupportedMediaType("admin requests are application/json")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        if type(doc) is not dict:
            raise BadRequest("the request body must be a JSON object")
        return doc

    @staticmethod
    def _audit(request: Request, doc: dict[str, Any]) -> tuple[str, str | None]:
        actor = doc.get("actor", request.headers.get("x-actor", "admin"))
        reason = doc.get("reason")
        if type(actor) is not str or not actor or len(actor) > _ACTOR_LIMIT:
            raise BadRequest(f"'actor' must be a string of 1 to {_ACTOR_LIMIT} characters")
        if reason is not None and (type(reason) is not str or len(reason) > 4096):
            raise BadRequest("'reason' must be a string of at most 4096 characters")
        return actor, reason

    @classmethod
    async def _call(cls, request: Request) -> _Call:
        """The model (and version) from the path, the JSON body, and who acts and why."""
        params = request.path_params
        name = check_model_name(params["model"]) if "model" in params else ""
        version = parse_version(params["version"]) if "version" in params else 0
        cls._wait(request)  # a malformed ?wait is refused before anything changes
        doc = await cls._body(request)
        actor, reason = cls._audit(request, doc)
        return _Call(name, version, doc, actor, reason)

    async def models(self, request: Request) -> Response:
        """``GET /admin/models``; in a fleet, each live replica's applied seq and version states too."""
        controller = self.controller
        models = [controller.describe(m) for m in controller.models()]
        fleet = self.fleet
        if fleet is None:
            return json_response({"models": models})
        try:
            reports = await fleet.reports()
        except Unavailable:  # the store is away: this replica's own view, and it says so
            reports = [fleet.report()]
        for model in models:
            model["replicas"] = [
                {"replica": r.get("replica"), **(r.get("models", {}).get(model["name"]) or {"seq": 0})} for r in reports
            ]
        return json_response({"models": models, "state_store": fleet.describe()})

    @staticmethod
    def _wait(request: Request) -> float | None:
        """``?wait=all[&timeout=S]``: how long to wait for the fleet (None: answer at once); 400 if malformed."""
        wait = request.query_params.get("wait")
        if wait is None:
            return None
        if wait != "all":
            raise BadRequest("'wait' must be 'all'")
        raw = request.query_params.get("timeout", str(WAIT_TIMEOUT_S))
        try:
            timeout_s = float(raw)
        except ValueError:
            raise BadRequest("'timeout' must be a number of seconds") from None
        if not 0 <= timeout_s <= WAIT_TIMEOUT_MAX_S:
            raise BadRequest(f"'timeout' must be 0 to {WAIT_TIMEOUT_MAX_S:.0f} seconds")
        return timeout_s

    async def _answer(self, request: Request, name: str, body: Any, status: int = 200) -> Response:
        """A change's answer; with ``?wait=all``, once every live replica applied it (202 naming the rest).

        The workers of one host always wait (read-your-writes: a request after the answer, to any
        worker, sees the change), for ``timeout`` or 30 s.
        """
        timeout_s = self._wait(request)
        fleet = self.fleet
        if timeout_s is None and fleet is not None and fleet.wait_always:
            timeout_s = WAIT_TIMEOUT_S
        if timeout_s is None or fleet is None:  # one replica: applied before the answer
            return json_response(body, status=status)
        seq = self.controller.seq(name)
        pending = await fleet.wait_all(name, seq, timeout_s)
        if not pending:
            return json_response(body, status=status)
        names = ", ".join(str(p["replica"]) for p in pending)
        return json_response(
            {"model": name, "seq": seq, "pending": pending, "result": body,
             "message": f"saved; not yet applied by {len(pending)} replica(s) after {timeout_s:g} s: {names}"},
            status=202,
        )  # fmt: skip

    async def load(self, request: Request) -> Response:
        """``POST /admin/models/{m}/versions/{v}/load``: answers once READY (or failed)."""
        call = await self._call(request)
        mv = await self.controller.load(call.model, call.version, call.actor, call.reason)
        return await self._answer(
            request, call.model,
            {"model": call.model, "version": str(call.version), "state": mv.state.value, "provider": mv.provider,
             "sha256": mv.artifact.sha256 if mv.artifact else None},
        )  # fmt: skip

    async def unload(self, request: Request) -> Response:
        """``POST /admin/models/{m}/versions/{v}/unload``: drains, then unloads."""
        call = await self._call(request)
        await self.controller.unload(call.model, call.version, call.actor, call.reason)
        return await self._answer(
            request, call.model, {"model": call.model, "version": str(call.version), "state": "UNLOADED"}
        )

    async def get_route(self, request: Request) -> Response:
        """``GET /admin/models/{m}/route``."""
        return json_response(self.controller.route(check_model_name(request.path_params["model"])))

    async def put_route(self, request: Request) -> Response:
        """``PUT /admin/models/{m}/route``."""
        call = await self._call(request)
        route = await self.controller.set_route(call.model, call.doc, call.actor, call.reason)
        return await self._answer(request, call.model, route.to_json())

    async def swap(self, request: Request) -> Response:
        """``POST /admin/models/{m}/swap`` with ``{"version": "2"}``."""
        call = await self._call(request)
        version = call.doc.get("version")
        if type(version) is int and not isinstance(version, bool):
            version = str(version)
        if type(version) is not str:
            raise BadRequest("'version' is required: the version to swap to")
        route = await self.controller.swap(call.model, parse_version(version), call.actor, call.reason)
        return await self._answer(request, call.model, route.to_json())

    async def rollback(self, request: Request) -> Response:
        """``POST /admin/models/{m}/rollback``, optionally ``{"to": seq}``."""
        call = await self._call(request)
        to = call.doc.get("to")
        if to is not None and (type(to) is not int or to < 0):
            raise BadRequest("'to' must be a change's sequence number")
        route = await self.controller.rollback(call.model, to, call.actor, call.reason)
        return await self._answer(request, call.model, route.to_json())

    async def history(self, request: Request) -> Response:
        """``GET /admin/models/{m}/history``."""
        name = check_model_name(request.path_params["model"])
        return json_response({"model": name, "history": self.controller.history(name)})

    # -- rollouts (docs/rollouts.md) -----------------------------------------------------------

    async def start_rollout(self, request: Request) -> Response:
        """``POST /admin/models/{m}/rollouts``: 201 with the rollout; 409 while one runs."""
        call = await self._call(request)
        return await self._answer(
            request, call.model, await self.rollouts.create(call.model, call.doc, call.actor), 201
        )

    async def current_rollout(self, request: Request) -> Response:
        """``GET /admin/models/{m}/rollouts/current``: the running or the last rollout."""
        name = check_model_name(request.path_params["model"])
        return json_response(await self.rollouts.read(name), headers={"Cache-Control": "no-store"})

    async def control_rollout(self, request: Request) -> Response:
        """``POST /admin/models/{m}/rollouts/current/pause|resume|abort|promote``."""
        action = request.path_params["action"]
        if action not in ("pause", "resume", "abort", "promote"):
            raise NotFound(f"no rollout action {action[:50]!r}: pause, resume, abort or promote")
        call = await self._call(request)
        return await self._answer(
            request, call.model, await self.rollouts.control(call.model, action, call.actor, call.reason)
        )

    async def stats(self, request: Request) -> Response:
        """``GET /admin/stats``: per-version counters for the console (docs/console.md)."""
        if self._stats is None:
            raise Unavailable("the server is starting")
        core = self._slot.current
        host = core.host if core is not None else None
        # On a multi-process host, the whole host's figures, as its /metrics (gateway/host/merge.py).
        figures = self._stats() if host is None else self._stats(await host.metrics())
        return json_response(figures, headers={"Cache-Control": "no-store"})

    # -- Triton's model repository extension -------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        """``POST /v2/repository/index``: every model and version, with its state."""
        await self._body(request)
        return json_response(self.controller.repository_index())

    async def repository_load(self, request: Request) -> Response:
        """``POST /v2/repository/models/{m}/load``: load the route's versions (or the highest)."""
        try:
            call = await self._call(request)
        except PayloadTooLarge as exc:
            # Only an upload makes a load request this big: say why it can never work.
            raise PayloadTooLarge(f"{exc.message}: model file uploads are not supported; nothing was loaded") from None
        refuse_load_overrides(call.doc.get("parameters"))
        await self.controller.load_model(call.model, call.actor, call.reason)
        return await self._answer(request, call.model, {})

    async def repository_unload(self, request: Request) -> Response:
        """``POST /v2/repository/models/{m}/unload``: unload every version without a role."""
        call = await self._call(request)
        await self.controller.unload_idle(call.model, call.actor, call.reason)
        return await self._answer(request, call.model, {})


def admin_mounts(endpoints: AdminEndpoints, slot: CoreSlot) -> list[Mount]:
    """``/admin`` and ``/v2/repository``, every route behind the token (unknown paths too)."""
    e = endpoints
    token = [Middleware(RequireToken, slot=slot)]
    admin = Mount(
        "/admin",
        routes=[
            Route("/models", e.models, methods=["GET"]),
            Route("/models/{model}/versions/{version}/load", e.load, methods=["POST"]),
            Route("/models/{model}/versions/{version}/unload", e.unload, methods=["POST"]),
            Route("/models/{model}/route", e.get_route, methods=["GET"]),
            Route("/models/{model}/route", e.put_route, methods=["PUT"]),
            Route("/models/{model}/swap", e.swap, methods=["POST"]),
            Route("/models/{model}/rollback", e.rollback, methods=["POST"]),
            Route("/models/{model}/history", e.history, methods=["GET"]),
            Route("/models/{model}/rollouts", e.start_rollout, methods=["POST"]),
            Route("/models/{model}/rollouts/current", e.current_rollout, methods=["GET"]),
            Route("/models/{model}/rollouts/current/{action}", e.control_rollout, methods=["POST"]),
            Route("/stats", e.stats, methods=["GET"]),
        ],
        middleware=token,
    )
    repository = Mount(
        "/v2/repository",
        routes=[
            Route("/index", e.repository_index, methods=["POST"]),
            Route("/models/{model}/load", e.repository_load, methods=["POST"]),
            Route("/models/{model}/unload", e.repository_unload, methods=["POST"]),
        ],
        middleware=token,
    )
    return [admin, repository]
