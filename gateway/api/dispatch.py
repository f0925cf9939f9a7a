"""The inference fast path: .../infer goes straight to its handler, the rest to Starlette.

Starlette's middleware stack and router cost a few microseconds per request; for a small model
that is a fifth of the whole request (docs/benchmarks.md). Inference requests are recognised by
splitting the path, and get the same error handling as every other route (``{"error": ...}``,
a generic 500 for our bugs); methods other than POST get 405.

This is also where the transport's policies for inference live: refusing work while draining
(503 and ``Connection: close``) or past the concurrency limit (503 at once, with
``Retry-After``), the request id (the client's ``x-request-id`` or a generated one, returned
on every answer), and the per-request metrics and access log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter, time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.body import BodyHeaders
from gateway.api.client import disconnected
from gateway.api.responses import ErrorReply, error_reply, reply_for, send_error, send_reply
from gateway.core import CoreSlot
from gateway.errors import ClientDisconnected, GatewayError
from gateway.exchange import Exchange, RequestIds
from gateway.lifecycle import Lifecycle
from gateway.predlog.records import prediction_record
from gateway.predlog.writer import PredictionLog
from gateway.telemetry.logs import AccessLog
from gateway.telemetry.requests import RequestMetrics

log = logging.getLogger(__name__)

#: The inference handler: ``path_params`` is set in the scope before it is called.
Handler = Callable[[Scope, Receive, Send, BodyHeaders, Exchange], Awaitable[None]]

#: Status counted for a request whose client left before its answer (nginx's convention).
CLIENT_CLOSED = 499
_MAX_ECHOED_ID = 256


def echoable(request_id: str) -> bool:
    """Whether an id may go back in a response header: printable ASCII of a sane length."""
    return len(request_id) <= _MAX_ECHOED_ID and request_id.isascii() and request_id.isprintable()


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

    def __init__(
        self,
        app: ASGIApp,
        handler: Handler,
        *,
        slot: CoreSlot,
        lifecycle: Lifecycle,
        metrics: RequestMetrics,
        ids: RequestIds,
        access_log: AccessLog | None = None,
    ) -> None:
        self.app = app
        self.handler = handler
        self.lifecycle = lifecycle
        self._metrics = metrics
        self._ids = ids
        self._access_log = access_log
        #: The core (its prediction log, when on), set by the app's lifespan.
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "http":
            params = infer_path_params(scope["path"])
            if params is not None:
                if scope["method"] != "POST":
                    await send_error(send, 405, "method not allowed", {"Allow": "POST"})
                    return
                scope["path_params"] = params
                await self._infer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        headers = BodyHeaders.parse(scope)
        given = headers.request_id
        exchange = Exchange(given.decode("latin-1") if given is not None else self._ids.next())
        life = self.lifecycle
        if life.draining:
            exchange.status = 503
            await self._error(
                send,
                exchange,
                error_reply(503, "the server is shutting down", {"Retry-After": "1", "Connection": "close"}),
            )
        elif life.inflight >= life.max_inflight:
            exchange.status = 503
            await self._error(
                send, exchange, error_reply(503, "too many requests in flight; retry later", {"Retry-After": "1"})
            )
        else:
            core = self._slot.current  # read once: the request keeps the log it started with
            predlog = core.predlog if core is not None else None
            held = predlog is not None and not predlog.blocking  # block: once its place is reserved
            life.inflight += 1  # also while it waits for room in the log: max_concurrent_requests bounds the waiters
            try:
                if predlog is not None and predlog.blocking:
                    await predlog.reserve()  # audit-grade: no room in the log, no inference (503 in time)
                    held = True
                await self.handler(scope, receive, send, headers, exchange)
                # Answered, unless the client left while it was computed: then nobody got the 200.
                exchange.status = CLIENT_CLOSED if disconnected(receive) else 200
            except GatewayError as exc:
                exchange.status = exc.status
                if exc.request_id is not None:  # a refused body still named itself
                    exchange.request_id = exc.request_id
                await self._error(send, exchange, reply_for(exc))
            except (ClientDisconnect, ClientDisconnected):
                exchange.status = CLIENT_CLOSED  # nobody to answer
            except Exception as exc:
                log.exception("unhandled error on POST %s", scope["path"])
                exchange.status = 500
                await self._error(send, exchange, reply_for(exc))
            finally:
                life.inflight -= 1
            if predlog is not None and held:
                self._log(predlog, exchange, perf_counter() - started)
        elapsed = perf_counter() - started
        self._metrics.record(exchange, elapsed)
        if self._access_log is not None:
            self._access_log.record(scope, exchange, elapsed)

    @staticmethod
    def _log(predlog: PredictionLog, exchange: Exchange, seconds: float) -> None:
        """Hand the request to the prediction log (once a version was chosen; else nothing to log)."""
        mv = exchange.served
        if mv is None:
            if predlog.blocking:
                predlog.release()
            return
        record = prediction_record(
            time(), exchange.request_id, mv, exchange.role, exchange.route_seq, exchange.inputs, exchange.outputs,
            exchange.status, seconds,
        )  # fmt: skip
        predlog.offer(record, reserved=predlog.blocking)

    @staticmethod
    async def _error(send: Send, exchange: Exchange, reply: ErrorReply) -> None:
        if echoable(exchange.request_id):
            reply.headers.append((b"x-request-id", exchange.request_id.encode("latin-1")))
        await send_reply(send, reply)
