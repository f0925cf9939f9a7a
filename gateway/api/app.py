"""The application: routes, error handling and the lifespan that owns all state."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.api.admin import AdminEndpoints, admin_mounts
from gateway.api.dispatch import InferenceDispatcher
from gateway.api.endpoints import Endpoints
from gateway.api.ports import AdminPortSplit
from gateway.api.responses import handle_error
from gateway.api_grpc.server import GrpcFrontEnd
from gateway.auth import PREDLOG_KEY_FILE, BearerAuth, hash_key, provision_token
from gateway.batching.cpu import CpuBusy
from gateway.console.serve import Console
from gateway.console.stats import stats_reader
from gateway.core import Core, CoreSlot
from gateway.drift.online import DriftMonitor
from gateway.errors import GatewayError
from gateway.exchange import RequestIds
from gateway.host.merge import HostView, worker_stats
from gateway.host.roles import HostRole
from gateway.inference import InferenceService
from gateway.lifecycle import Lifecycle
from gateway.loader import RuntimeLoader, connect_remote, load_runtime
from gateway.models import ModelManager
from gateway.predlog.writer import PredictionLog
from gateway.registry.base import Registry
from gateway.registry.local import LocalRegistry
from gateway.release.controller import ReleaseController
from gateway.release.follow import AliasFollower
from gateway.release.history import unloaded_versions
from gateway.release.shadow import ShadowRunner
from gateway.release.store import StateStore
from gateway.rollouts.figures import Figures
from gateway.rollouts.runner import rollout_manager
from gateway.settings import Settings, registry_names, usable_cpu_time
from gateway.state.controller import FleetController
from gateway.state.mode import open_state
from gateway.telemetry.collector import GatewayCollector
from gateway.telemetry.logs import AccessLog
from gateway.telemetry.requests import RequestMetrics
from runtimes.devices import probe_devices
from runtimes.kinds import import_runtimes

log = logging.getLogger(__name__)

#: At shutdown, how long the prediction log may take to write what is queued, at most.
PREDLOG_CLOSE_S = 10.0
#: Allocations between young-generation collections once serving (Python's default: 700).
GC_THRESHOLD = 10_000


def build_registry(settings: Settings) -> Registry:
    """The registry the settings name: the repository directory, or MLflow (blocking: imports it)."""
    if settings.registry_kind == "mlflow":
        from gateway.registry.allow import parse_rules
        from gateway.registry.mlflow import MlflowRegistry

        return MlflowRegistry(
            settings.registry_tracking_uri,
            settings.registry_cache_dir,
            settings.repository,
            names=registry_names(settings),
            timeout_s=settings.registry_timeout_s,
            artifact_allow=parse_rules(settings.registry_artifact_allow),
        )
    return LocalRegistry(settings.repository)


async def _freeze_after_startup(manager: ModelManager) -> None:
    """Once the models are loaded, move everything alive to the GC's permanent generation.

    The loaded models, sessions and modules then stop being rescanned by every collection,
    and collections of the young generation run less often: short-lived request objects
    rarely form cycles, and the default threshold (700) collects every few requests under
    load (a few percent of a small model's throughput, docs/benchmarks.md).
    """
    await manager.wait_started()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


async def _prediction_log(settings: Settings, rng: random.Random) -> PredictionLog:
    """The prediction log the settings ask for, started; its hash key lives in the state dir."""
    key = await asyncio.to_thread(hash_key, settings.state_dir / PREDLOG_KEY_FILE)
    predlog = PredictionLog(
        settings.log_dir,
        hash_key=key,
        queue_size=settings.predlog_queue_size,
        queue_bytes=settings.predlog_queue_bytes,
        reserve_timeout_s=settings.predlog_block_timeout_s,
        policy=settings.predlog_policy,
        rotate_bytes=settings.predlog_rotate_bytes,
        rotate_s=settings.predlog_rotate_s,
        compress=settings.predlog_compress,
        flush_interval_s=settings.predlog_flush_interval_s,
        rng=random.Random(rng.random()),
    )
    predlog.start()
    log.info("prediction log: %s (policy %s)", settings.log_dir, settings.predlog_policy)
    return predlog


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    loader: RuntimeLoader | None = None,
    rng: random.Random | None = None,
    on_ready: Callable[[ModelManager], None] | None = None,
    environ: Mapping[str, str] | None = None,
    lifecycle: Lifecycle | None = None,
    request_ids: RequestIds | None = None,
    grpc: GrpcFrontEnd | None = None,
    role: HostRole | None = None,
) -> ASGIApp:
    """Build the ASGI app; models load in the background once the lifespan starts.

    ``lifecycle`` is shared with the server, whose signal handler starts the drain. ``grpc``,
    the gRPC listener the server runs beside uvicorn, shares the app's core slot (``grpc.slot``).
    ``role`` is this process's place on a multi-process host (a worker), None for one process.
    """
    import_runtimes()  # here, not on the event loop when a first version loads or connects
    lifecycle = lifecycle or Lifecycle(settings.max_concurrent_requests, settings.max_inflight_body_bytes)
    # The one place the running state lives: every handler, middleware and collector below reads
    # the core from it; the lifespan sets it once everything is built and clears it at shutdown.
    # The gRPC listener is built before the app (the server binds it first) and brings its slot.
    slot = grpc.slot if grpc is not None else CoreSlot()
    request_metrics = RequestMetrics()
    collector = GatewayCollector(request_metrics, lifecycle, slot)
    metrics_registry = CollectorRegistry()
    metrics_registry.register(collector)
    if grpc is not None:
        metrics_registry.register(grpc.collector)
    ProcessCollector(registry=metrics_registry)
    PlatformCollector(registry=metrics_registry)
    endpoints = Endpoints(
        slot,
        settings.max_body_bytes,
        lifecycle,
        metrics_registry,
        strict_readiness=settings.strict_readiness,
        max_decompressed_bytes=settings.max_decompressed_bytes,
    )
    admin = AdminEndpoints(slot, stats_reader(collector.collect, time.time))  # GET /admin/stats: the console's figures

    async def build_core() -> tuple[Core, AliasFollower]:
        """Build and start everything the app serves from (the follower is the lifespan's to stop)."""
        devices = probe_devices()
        log.info("devices: %s", devices.describe())
        store = StateStore(settings.state_dir)
        # The state directory's, a Redis fleet's, or (a worker of a multi-worker host) the host store's.
        records, fleet = await open_state(settings, role, store)
        token = await asyncio.to_thread(
            provision_token, os.environ if environ is None else environ, settings.admin_token_file, settings.state_dir
        )
        random_source = rng or random.Random()
        source = registry if registry is not None else await asyncio.to_thread(build_registry, settings)
        engines = None
        if role is not None and not role.is_engine:  # a worker: versions placed in an engine load there
            from gateway.engine.placement import Engines

            engines = Engines(role, devices)
            await engines.start()
        manager = ModelManager(
            source,
            loader or partial(load_runtime, devices),
            rng=random_source,
            saved_routes={name: record.route for name, record in records.items()},
            remote_loader=connect_remote,
            engines=engines,
            # CPU-bound "auto" batches wait to fill; a worker's share is its part of the host's CPUs.
            busy=CpuBusy(usable_cpu_time() / (role.workers if role is not None else 1)),
            # A replica (re)started after an unload does not bring the version back (a fleet's state).
            unloaded={n: unloaded_versions(r.history) for n, r in records.items()} if fleet is not None else None,
        )
        predlog = await _prediction_log(settings, random_source) if settings.predlog else None
        shadows = ShadowRunner(
            timeout_s=settings.shadow_timeout_s,
            max_inflight=settings.shadow_max_inflight,
            max_inflight_bytes=settings.shadow_max_inflight_bytes,
            predlog=predlog,
        )
        service = InferenceService(manager, rng=random_source, shadows=shadows)
        drift = None
        if predlog is not None:  # online drift reads the prediction log's stream
            drift = DriftMonitor(manager)
            predlog.add_observer(drift.observe)
            drift.start()
        controller = (
            ReleaseController(manager, store, records, shadows=shadows)
            if fleet is None
            else FleetController(manager, store, records, fleet, shadows=shadows, local_copy=bool(settings.state_store))
        )
        manager.start()
        follower = AliasFollower(manager, controller, settings.registry_poll_s)
        follower.start()  # idle unless a model's [mlflow] table follows an alias
        if fleet is not None and isinstance(controller, FleetController):
            fleet.start(controller, manager)
        # Metric-gated rollouts (docs/rollouts.md): one task per running rollout, owned here.
        figures = Figures(request_metrics, lambda: shadows.stats, drift.psi if drift is not None else None)
        started = manager.wait_started
        rollouts = rollout_manager(settings.state_dir, controller, figures, started=started, environ=environ)
        await rollouts.start()
        host = None
        if role is not None:  # a worker: /metrics and statistics answer for every process of the host
            host = HostView(role, metrics_registry.collect, worker_stats(slot))
            await host.start()
        core = Core(
            manager=manager,
            service=service,
            controller=controller,
            auth=BearerAuth(token),
            shadows=shadows,
            rollouts=rollouts,
            predlog=predlog,
            drift=drift,
            fleet=fleet,
            role=role,
            host=host,
        )
        return core, follower

    async def close_core(core: Core, follower: AliasFollower) -> None:
        """Stop what ``build_core`` started, in the reverse order of what depends on what."""
        await core.rollouts.close()
        if core.fleet is not None:
            await core.fleet.close()
        await follower.close()
        if core.drift is not None:
            await core.drift.close()
        await core.shadows.close()
        if core.predlog is not None:
            # Requests have drained by now (the server waits for them before the lifespan);
            # a healthy disk writes what is queued in milliseconds, a stalled one gets 10 s.
            await core.predlog.close(timeout_s=min(settings.graceful_timeout_s, PREDLOG_CLOSE_S))
        await core.manager.close()
        if core.manager.engines is not None:  # after the versions let go of theirs
            await core.manager.engines.close()
        if core.host is not None:  # last: the peers' scrapes count this process until it is done
            await core.host.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Core]]:
        core, follower = await build_core()
        slot.set(core)
        settle = asyncio.create_task(_freeze_after_startup(core.manager), name="gc-freeze")
        if on_ready is not None:
            on_ready(core.manager)
        try:
            yield {"core": core}  # Starlette's lifespan state: request.state.core
        finally:
            settle.cancel()
            try:
                await close_core(core, follower)
            finally:
                slot.clear()

    e = endpoints
    # Inference (.../infer) never reaches these routes: the dispatcher in front serves it.
    routes = [
        Route("/metrics", e.metrics, methods=["GET"]),
        Route("/v2/health/live", e.live, methods=["GET"]),
        Route("/v2/health/ready", e.ready, methods=["GET"]),
        Route("/v2", e.server_metadata, methods=["GET"]),
        Route("/v2/models/stats", e.model_stats, methods=["GET"]),
        Route("/v2/models/{model}", e.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/stats", e.model_stats, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", e.model_stats, methods=["GET"]),
        Route("/v2/models/{model}/ready", e.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/config", e.model_config, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", e.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", e.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/config", e.model_config, methods=["GET"]),
        *admin_mounts(admin, slot),
        *(Console().routes() if settings.console else []),  # GET /console (docs/console.md)
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: handle_error,
            HTTPException: handle_error,
            Exception: handle_error,
        },
    )
    dispatcher = InferenceDispatcher(
        app,
        e.infer,
        slot=slot,
        lifecycle=lifecycle,
        metrics=request_metrics,
        ids=request_ids or RequestIds(),
        access_log=AccessLog() if settings.access_log else None,
    )
    if settings.admin_port:
        return AdminPortSplit(dispatcher, settings.admin_port)
    return dispatcher
