"""The app's one core: built by the lifespan, held in one slot, yielded as the lifespan state."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest

from gateway.api.app import create_app
from gateway.api_grpc.server import GrpcFrontEnd
from gateway.core import Core, CoreSlot
from gateway.errors import Unavailable
from gateway.lifecycle import Lifecycle
from gateway.settings import Settings
from tests.onnx_models import identity, write_model

TOKEN = "core-test-token-0123456789"


def test_an_empty_slot_answers_starting_and_is_set_once() -> None:
    slot = CoreSlot()
    assert slot.current is None
    with pytest.raises(Unavailable, match="the server is starting"):
        slot.core  # noqa: B018 - the property raises
    core: Any = object()  # the slot holds whatever the lifespan built; its fields are not read here
    slot.set(core)
    assert slot.core is core
    with pytest.raises(RuntimeError, match="already set"):
        slot.set(core)
    slot.clear()
    assert slot.current is None


async def _lifespan(app: Any, state: dict[str, Any], started: asyncio.Event, stop: asyncio.Event) -> list[str]:
    """Run the app's lifespan as uvicorn does: startup, wait for ``stop``, shutdown."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            started.set()
            await stop.wait()
            await inbox.put({"type": "lifespan.shutdown"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}, "state": state}
    await app(scope, receive, send)
    return sent


def test_the_lifespan_builds_one_core_shares_it_with_grpc_and_clears_it() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_model(root / "models", "echo", 1, identity("FP32", [-1, 2]))
        settings = Settings(
            repository=root / "models", state_dir=root / "state", log_dir=root / "log", predlog=True, grpc_port=0
        )
        lifecycle = Lifecycle(settings.max_concurrent_requests, settings.max_inflight_body_bytes)
        front = GrpcFrontEnd(settings, lifecycle, port=0)
        app = create_app(settings, lifecycle=lifecycle, grpc=front, environ={"TENSORGATE_ADMIN_TOKEN": TOKEN})
        assert front.slot.current is None  # nothing is built before the lifespan starts
        state: dict[str, Any] = {}
        seen: list[Core | None] = []

        async def main() -> list[str]:
            started, stop = asyncio.Event(), asyncio.Event()
            run = asyncio.create_task(_lifespan(app, state, started, stop))
            await asyncio.wait_for(started.wait(), 60)
            core = front.slot.current
            seen.append(core)
            if core is not None:
                await core.manager.wait_started()  # the models load in the background
            stop.set()
            return await asyncio.wait_for(run, 60)

        sent = asyncio.run(main())
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        core = state["core"]
        assert isinstance(core, Core)
        assert seen == [core]  # the gRPC calls, REST handlers and metrics read this very core
        assert core.predlog is not None and core.drift is not None and core.fleet is None
        assert core.auth.allows(f"Bearer {TOKEN}".encode()) and not core.auth.allows(b"Bearer wrong-token-000000")
        assert front.slot.current is None  # cleared at shutdown
