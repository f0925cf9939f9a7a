"""The admin listener: with ``admin_port`` set, the admin API answers there and nowhere else."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.responses import send_error

#: The path prefixes of the admin API: the release API, Triton's repository extension, and the
#: console, whose page calls the admin API from its own origin (docs/console.md).
ADMIN_PREFIXES = ("/admin", "/v2/repository", "/console")


def is_admin_path(path: str) -> bool:
    """Whether ``path`` belongs to the admin API (``/admin...`` or ``/v2/repository...``)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_PREFIXES)


class AdminPortSplit:
    """ASGI app in front of the gateway: admin paths on ``admin_port`` only, the rest on the main port.

    The listening socket a request came in on is the ASGI scope's ``server`` (host, port).
    Inference, health, metadata and ``/metrics`` stay on the main port, where probes and
    Prometheus find them; a NetworkPolicy can then open the main port to clients and the
    admin port to the release pipeline only (docs/operations.md).
    """

    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse with 404 what arrived on the wrong listener; pass everything else on."""
        if scope["type"] == "http":
            server = scope.get("server")
            on_admin_port = server is not None and server[1] == self.admin_port
            if is_admin_path(scope["path"]) != on_admin_port:
                where = "the admin port" if not on_admin_port else "the inference port"
                await send_error(send, 404, f"not found on this port (it is served on {where})")
                return
        await self.app(scope, receive, send)
