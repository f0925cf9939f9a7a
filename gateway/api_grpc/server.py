"""The gRPC listener: grpc.aio in uvicorn's event loop, its limits, its metrics and its drain."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc  # type: ignore[import-untyped]
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.api_grpc.handlers import add_service
from gateway.api_grpc.service import GrpcInference, status_code
from gateway.core import CoreSlot
from gateway.exchange import RequestIds
from gateway.lifecycle import Lifecycle
from gateway.settings import Settings
from gateway.telemetry.requests import RequestMetrics

log = logging.getLogger(__name__)

#: HTTP/2 streams one connection may have open at once (grpc's default is unlimited).
MAX_STREAMS_PER_CONNECTION = 1024


class GrpcBindError(Exception):
    """The gRPC port could not be bound."""


class GrpcMetrics(Collector):
    """``tensorgate_grpc_requests_total`` and ``tensorgate_grpc_request_duration_seconds``.

    Families of their own rather than a label on the REST ones: their ``code`` is the gRPC
    status name (``OK``, ``INVALID_ARGUMENT``), which would make ``code=~"5.."`` queries on
    the REST families silently miss gRPC errors, or mix two vocabularies in one label.
    """

    def __init__(self, requests: RequestMetrics) -> None:
        self._requests = requests

    def collect(self) -> Iterator[Metric]:
        """Build the families from the counters."""
        requests = CounterMetricFamily(
            "tensorgate_grpc_requests_total", "gRPC ModelInfer calls answered, by version, role and gRPC status",
            labels=["model", "version", "role", "code"],
        )  # fmt: skip
        duration = HistogramMetricFamily(
            "tensorgate_grpc_request_duration_seconds", "End-to-end gRPC ModelInfer latency in the gateway",
            labels=["model", "version", "role"],
        )  # fmt: skip
        for key, series in list(self._requests.series.items()):
            by_code: dict[str, int] = {}
            for status, count in series.codes.items():
                name = status_code(status).name
                by_code[name] = by_code.get(name, 0) + count
            for name, count in sorted(by_code.items()):
                requests.add_metric([*key, name], count)
            buckets, total = series.latency.cumulative()
            duration.add_metric(list(key), buckets, total)
        yield requests
        yield duration


def server_options(settings: Settings, share_port: bool = False) -> list[tuple[str, int]]:
    """grpc core's channel arguments for the listener: message size, streams, keepalive, port sharing.

    ``share_port``: the workers of one host listen on the same port (SO_REUSEPORT; the kernel
    spreads connections over them). The supervisor checks that nothing else holds the port
    before it starts them (gateway/host/supervisor.py), so no other server shares it.
    """
    return [
        # A message larger than an inference body may be is refused by grpc itself (RESOURCE_EXHAUSTED).
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        # Metadata is gRPC's headers: the same limit. grpc's "max" is a soft limit (past it, calls
        # are refused at random); the absolute one refuses every call past it.
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_header_bytes),
        # Streams past this wait on the client's side (HTTP/2 flow control); past
        # max_concurrent_requests in all, ModelInfer answers RESOURCE_EXHAUSTED.
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        # grpc sets SO_REUSEPORT by default: a second server on the same port would share it
        # silently. Only a host's own workers share it.
        ("grpc.so_reuseport", 1 if share_port else 0),
        # Clients that ping too often (an abuse) get GOAWAY, as grpc's defaults intend.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


class GrpcFrontEnd:
    """The gRPC server beside uvicorn: bound before serving; it serves from the app's core slot.

    ``start`` binds and serves (calls answer UNAVAILABLE until the app's lifespan sets the core
    in ``slot``, which ``create_app`` shares); ``stop`` is the
    drain: new calls are refused (GOAWAY), in-flight ones get ``grace_s`` to finish.
    """

    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        ids: RequestIds | None = None,
        *,
        port: int | None = None,
        required: bool = True,
        share_port: bool = False,
    ) -> None:
        self.settings = settings
        #: Where to listen: ``grpc_port`` unless given (0: any free port, for tests).
        self.listen_port = settings.grpc_port if port is None else port
        #: False for the default port nobody asked for: busy, it is skipped with a warning.
        self.required = required
        #: A worker of a multi-process host: its siblings listen on the same port.
        self.share_port = share_port
        self.metrics = RequestMetrics()
        self.collector = GrpcMetrics(self.metrics)
        #: The core the calls serve from: ``create_app`` shares this slot and its lifespan sets it.
        self.slot = CoreSlot()
        self.servicer = GrpcInference(
            lifecycle, self.slot, self.metrics, ids or RequestIds(), strict_readiness=settings.strict_readiness
        )
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen on ``listen_port`` and serve; the bound port."""
        settings = self.settings
        server = grpc.aio.server(
            options=server_options(settings, self.share_port),
            # grpc.aio makes calls past this wait (not refused): a bound on handler tasks, above
            # max_concurrent_requests so that ModelInfer's own cap answers RESOURCE_EXHAUSTED first.
            maximum_concurrent_rpcs=2 * settings.max_concurrent_requests + 16,
        )
        add_service(self.servicer, server)
        want = self.listen_port
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        try:
            bound: int = server.add_insecure_port(f"{host}:{want}")
        except RuntimeError as exc:  # grpc raises a RuntimeError naming the address
            raise GrpcBindError(f"cannot listen for gRPC on {host}:{want}: {exc}") from None
        if not bound:
            raise GrpcBindError(f"cannot listen for gRPC on {host}:{want}")
        await server.start()
        self._server = server
        self.port = bound
        log.info("gRPC listening on %s:%d", host, bound)
        return bound

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let in-flight ones finish within ``grace_s``, then close."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
