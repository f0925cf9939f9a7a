"""A real uvicorn server on an ephemeral loopback port, run in a thread for the tests."""

from __future__ import annotations

import contextlib
import gzip
import random
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from gateway.api.app import create_app
from gateway.api.server import GatewayServer, build_server, listen_socket
from gateway.api_grpc.server import GrpcFrontEnd
from gateway.lifecycle import Lifecycle
from gateway.loader import RuntimeLoader
from gateway.models import ModelManager
from gateway.registry.base import Registry
from gateway.settings import Settings
from tests.rawhttp import Reply, request

ADMIN_TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}


class RunningServer:
    """Where a test server listens."""

    def __init__(self, port: int, server: GatewayServer, settings: Settings) -> None:
        self.port = port
        #: Where admin() sends its calls: the admin listener's port when the server has one.
        self.admin_port = settings.admin_port or port
        self.server = server
        self.settings = settings
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://127.0.0.1:{port}"

    @property
    def grpc(self) -> str:
        """``127.0.0.1:port`` of the gRPC listener (``serve(..., grpc=True)``), once it listens."""
        assert self.server.grpc is not None and self.server.grpc.port, "no gRPC listener"
        return f"127.0.0.1:{self.server.grpc.port}"


def free_port() -> int:
    """A loopback port free now (for a server started in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, status: int = 200, timeout_s: float = 30.0) -> None:
    """Poll ``url`` until it answers ``status``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == status:
                    return
                last = response.status
        except urllib.error.HTTPError as exc:
            last = exc.code
            if exc.code == status:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} never answered {status} (last: {last})")


@contextmanager
def serve(
    repository: Path,
    *,
    ready: bool = True,
    registry: Registry | None = None,
    loader: RuntimeLoader | None = None,
    on_ready: Callable[[ModelManager], None] | None = None,
    environ: dict[str, str] | None = None,
    rng: random.Random | None = None,
    admin_listener: bool = False,
    grpc: bool = False,
    **settings: Any,
) -> Iterator[RunningServer]:
    """Serve ``repository`` with the real stack (uvloop, httptools) until the block ends.

    State (routes, history, a generated token) goes to a fresh temporary directory unless
    ``state_dir`` is given; the admin token is ``ADMIN_TOKEN`` unless ``environ`` says otherwise.
    ``admin_listener`` gives the admin API a second ephemeral port (``admin_port``); ``grpc``
    serves gRPC on an ephemeral port too (``grpc_port``; off otherwise).
    """
    scratch = None
    if "state_dir" not in settings or "log_dir" not in settings:
        scratch = tempfile.TemporaryDirectory(prefix="tensorgate-state-")
        settings.setdefault("state_dir", Path(scratch.name) / "state")
        settings.setdefault("log_dir", Path(scratch.name) / "predictions")
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sockets = [sock]
    if admin_listener:
        sockets.append(listen_socket("127.0.0.1", 0))
        settings["admin_port"] = sockets[1].getsockname()[1]
    settings.setdefault("log_level", "warning")
    settings.setdefault("grpc_port", 0)
    config = Settings(repository=repository, port=port, **settings)
    lifecycle = Lifecycle(config.max_concurrent_requests, config.max_inflight_body_bytes)
    front = GrpcFrontEnd(config, lifecycle, port=0) if grpc else None
    app = create_app(
        config,
        registry=registry,
        loader=loader,
        on_ready=on_ready,
        environ={"TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN} if environ is None else environ,
        lifecycle=lifecycle,
        rng=rng,
        grpc=front,
    )
    server = build_server(config, app, lifecycle, front)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    running = RunningServer(port, server, config)
    try:
        wait_for(running.url + "/v2/health/live")
        if ready:
            wait_for(running.url + "/v2/health/ready")
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        for listener in sockets:
            listener.close()
        if scratch is not None:
            scratch.cleanup()


def admin(
    server: RunningServer, method: str, path: str, doc: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    """One admin API call with the test token (or ``headers``), ``doc`` as its JSON body."""
    body = b"" if doc is None else orjson.dumps(doc)
    return request(server.admin_port, method, path, body, AUTH if headers is None else headers)


def prediction_log(directory: Path) -> list[dict[str, Any]]:
    """Every record under ``directory`` (plain and gzip files); a torn last line is skipped."""
    records = []
    for path in sorted(directory.rglob("*.jsonl*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for line in data.splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):  # a torn last line
                records.append(orjson.loads(line))
    return records
