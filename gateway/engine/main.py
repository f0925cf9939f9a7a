"""An engine process: one device's model sessions and batchers, served to the host's workers.

``tensorgate serve`` becomes an engine when the supervisor starts it as ``engine-<device>``
(gateway/host/roles.py). It binds a ZeroMQ ROUTER at ``engine_endpoint(run_dir, device)``,
builds the registry from the same settings as the workers, and loads a version when a first
worker asks for it (gateway/engine/catalogue.py). SIGTERM (or SIGINT): requests in flight
finish and are answered, new ones are refused, the versions are released; exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from functools import partial

import uvloop

from gateway.api.app import build_registry
from gateway.engine.catalogue import EngineModels
from gateway.engine.placement import shared_files
from gateway.engine.server import EngineServer
from gateway.host.roles import HostRole, engine_endpoint
from gateway.loader import load_runtime
from gateway.models import ModelManager
from gateway.settings import Settings
from gateway.telemetry.engine import engine_control
from runtimes.devices import probe_devices
from runtimes.kinds import import_runtimes

log = logging.getLogger(__name__)


async def serve_engine(settings: Settings, role: HostRole, stop: asyncio.Event) -> EngineServer:
    """Build the engine and serve until ``stop`` is set; returns the (closed) server."""
    import_runtimes()
    devices = probe_devices()
    registry = await asyncio.to_thread(build_registry, settings)
    manager = ModelManager(registry, partial(load_runtime, devices), rng=random.Random())
    manager.started = True  # nothing loads at start-up: workers ask for what they serve
    models = EngineModels(manager)
    server = EngineServer(engine_endpoint(role.run_dir, role.device), models, shared_files(role), device=role.device)
    server.bind()
    log.info("engine %s listening (%s; incarnation %s)", role.device, devices.describe(), server.incarnation[:8])
    # Its batch-level statistics and metrics, for the workers' /metrics and stats (gateway/host/merge.py).
    control = engine_control(role, models.stats, partial(_queued, manager))
    await control.start()
    try:
        await server.serve(stop)
    finally:
        await manager.close()
        server.close()
        await control.close()
    return server


def _queued(manager: ModelManager) -> dict[tuple[str, str], int]:
    """Requests waiting in each version's batch queue (the engine's batchers; the workers report 0)."""
    return {
        (model.name, mv.label): mv.batcher.queued
        for model in manager.models()
        for mv in model.versions.values()
        if mv.batcher is not None
    }


def run_engine(settings: Settings, role: HostRole) -> int:
    """Run the engine process of ``role.device`` until SIGTERM; the exit status."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_engine(settings, role, stop)
        log.info("engine %s stopped", role.device)
        return 0

    return uvloop.run(main())
