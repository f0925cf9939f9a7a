"""The inference fast path: .../infer goes straight to its handler, the rest to Starlette.

Starlette's middleware stack and router cost a few microseconds per request; for a small model
that is a fifth of the whole request (docs/benchmarks.md). Inference requests are recognised by
splitting the path, and get the same error handling as every other route (``{"error": ...}``,
a generic 500 for our bugs); methods other than POST get 405.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ClientDisconnected, GatewayError

log = logging.getLogger(__name__)

#: The inference handler: ``path_params`` is set in the scope before it is called.
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Send a complete ``{"error": message}`` response."""
    body = orjson.dumps({"error": message})
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def infer_path_params(path: str) -> dict[str, str] | None:
    """``{"model": m}`` or ``{"model": m, "version": v}`` for an inference path, else None."""
    parts = path.split("/")
    # ['', 'v2', 'models', m, 'infer'] or ['', 'v2', 'models', m, 'versions', v, 'infer']
    n = len(parts)
    if parts[-1] != "infer" or parts[1:3] != ["v2", "models"] or parts[0] != "":
        return None
    if n == 5 and parts[3]:
        return {"model": parts[3]}
    if n == 7 and parts[4] == "versions" and parts[3] and parts[5]:
        return {"model": parts[3], "version": parts[5]}
    return None


class InferenceDispatcher:
    """ASGI app in front of Starlette that serves inference requests itself."""

    def __init__(self, app: ASGIApp, handler: Handler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "http":
            params = infer_path_params(scope["path"])
            if params is not None:
                if scope["method"] != "POST":
                    await send_error(send, 405, "method not allowed", {"Allow": "POST"})
                    return
                scope["path_params"] = params
                try:
                    await self.handler(scope, receive, send)
                except GatewayError as exc:
                    await send_error(send, exc.status, exc.message, exc.headers)
                except (ClientDisconnect, ClientDisconnected):
                    pass  # nobody to answer
                except Exception:
                    log.exception("unhandled error on POST %s", scope["path"])
                    await send_error(send, 500, "internal error")
                return
        await self.app(scope, receive, send)
