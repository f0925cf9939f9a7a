"""The HTTP server: uvicorn with our transport limits, the deadline sweep and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from gateway.api.transport import GuardedHttpToolsProtocol, TransportLimits
from gateway.api_grpc.server import GrpcBindError, GrpcFrontEnd
from gateway.lifecycle import Lifecycle
from gateway.settings import Settings

log = logging.getLogger(__name__)


def transport_limits(settings: Settings) -> TransportLimits:
    """The transport limits the settings ask for."""
    return TransportLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        max_connections=settings.max_connections,
        send_timeout_s=settings.send_timeout_s,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server with a graceful drain and a once-a-second sweep of request deadlines.

    The first SIGTERM or SIGINT starts the drain: readiness fails and new inference requests
    get 503 with ``Connection: close`` at once; uvicorn then stops listening, lets in-flight
    and queued requests finish (at most ``graceful_timeout_s``) and runs the lifespan's
    shutdown, which flushes the prediction log. A second signal exits at once, with status 1.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        admin_port: int = 0,
        grpc: GrpcFrontEnd | None = None,
        hold: Callable[[], Awaitable[None]] | None = None,
        *,
        supervised: bool = False,
    ) -> None:
        super().__init__(config)
        #: A worker of a multi-process host: its supervisor escalates (a second signal to the
        #: supervisor kills every process), so a signal here during the drain changes nothing.
        #: systemd's default stop signals every process of the unit, then the supervisor relays
        #: its own SIGTERM: two signals that must not cut the drain short.
        self.supervised = supervised
        self.lifecycle = lifecycle
        #: With a port of its own, the admin API listens there as well (gateway/api/ports.py).
        self.admin_port = admin_port
        #: The gRPC listener, served in this event loop; bound before the HTTP ports.
        self.grpc = grpc
        #: A worker of a multi-process host: after the lifespan's start-up, wait for this (its
        #: initial model loads) before accepting anything, gRPC included. The port it shares is
        #: served meanwhile by the other workers; one process alone listens at once, as always.
        self.hold = hold

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen for gRPC (when on), on the main port, and on the admin port when there is one."""
        if self.hold is not None:
            self._hold_after_lifespan(self.hold)
        else:
            await self._start_grpc()
        try:
            await self._listen(sockets)
        finally:
            if not self.started and self.grpc is not None:  # the lifespan or a bind failed
                await self.grpc.stop(0)

    async def _start_grpc(self) -> None:
        if self.grpc is None:
            return
        try:
            await self.grpc.start()
        except GrpcBindError as exc:
            if self.grpc.required:
                log.error("%s", exc)
                sys.exit(3)  # as for a busy HTTP port
            # The default port, not asked for: a second server on one host (another
            # --port) keeps working as it did before gRPC existed, without gRPC.
            log.warning("%s: serving without gRPC (set grpc_port to choose a port, 0 for none)", exc)
            self.grpc = None

    def _hold_after_lifespan(self, hold: Callable[[], Awaitable[None]]) -> None:
        """Run ``hold`` (then bind gRPC) between the lifespan's start-up and the HTTP listeners."""
        lifespan_startup = self.lifespan.startup

        async def startup_then_hold() -> None:
            await lifespan_startup()
            if self.lifespan.should_exit:  # the start-up failed: uvicorn exits
                return
            waiting = asyncio.ensure_future(hold())
            try:
                while not waiting.done() and not self.should_exit:  # a signal stops the wait
                    await asyncio.wait({waiting}, timeout=0.1)
            finally:
                waiting.cancel()
            if not self.should_exit:
                await self._start_grpc()

        self.lifespan.startup = startup_then_hold

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain gRPC (GOAWAY, in-flight calls finish) and HTTP together, then run the lifespan's shutdown."""
        grpc = self.grpc
        if grpc is not None:
            # Both drains share the one graceful_timeout_s (the pod's grace period counts on it);
            # the lifespan's shutdown, which closes the prediction log and the models that gRPC
            # calls still in flight need, waits for the gRPC drain too.
            stopping = asyncio.create_task(grpc.stop(self.config.timeout_graceful_shutdown or 0))
            lifespan_shutdown = self.lifespan.shutdown

            async def after_grpc() -> None:
                await stopping
                await lifespan_shutdown()

            self.lifespan.shutdown = after_grpc
        await super().shutdown(sockets)

    async def _listen(self, sockets: list[socket.socket] | None) -> None:
        if sockets is None and self.admin_port:
            host = self.config.host
            try:
                sockets = [listen_socket(host, self.config.port), listen_socket(host, self.admin_port)]
            except OSError as exc:
                log.error("cannot listen on %s: %s", host, exc)
                sys.exit(3)  # uvicorn's own status when it cannot bind
            log.info("listening on http://%s:%d (admin API on port %d)", host, self.config.port, self.admin_port)
        await super().startup(sockets)

    def drain(self) -> None:
        """Begin the graceful drain (what the first signal does)."""
        self.lifecycle.begin_drain()
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: drain on the first signal, exit on the second."""
        if self.lifecycle.draining and self.supervised:
            log.info("signal %d during the drain: draining already (the supervisor stops what outlives it)", sig)
            return
        if self.lifecycle.draining:
            log.warning("signal %d during the drain: exiting at once", sig)
            logging.shutdown()
            os._exit(1)
        log.info("signal %d: draining (readiness fails, new requests are refused)", sig)
        self.drain()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s); once a second, close connections past their deadlines."""
        if counter % 10 == 0:
            now = asyncio.get_running_loop().time()
            for connection in list(self.server_state.connections):
                if isinstance(connection, GuardedHttpToolsProtocol):
                    connection.check_deadline(now)
        return await super().on_tick(counter)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, as uvicorn binds its own (``SO_REUSEADDR``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def build_server(
    settings: Settings,
    app: ASGIApp,
    lifecycle: Lifecycle,
    grpc: GrpcFrontEnd | None = None,
    hold: Callable[[], Awaitable[None]] | None = None,
    *,
    supervised: bool = False,
) -> GatewayServer:
    """A server for ``app`` with every transport setting applied (and ``grpc`` served beside it)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GuardedHttpToolsProtocol.with_limits(transport_limits(settings)),
        log_level=settings.log_level,
        access_log=False,  # ours is structured (settings.access_log)
        log_config=None,  # records go to the root logger, formatted by configure_logging
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),
        timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_s)),
        # We trust no forwarding proxy by default; X-Forwarded-* would be the client's word.
        proxy_headers=False,
        server_header=False,  # no "server: uvicorn": one header less per response, and less to fingerprint
    )
    return GatewayServer(config, lifecycle, settings.admin_port, grpc, hold, supervised=supervised)
