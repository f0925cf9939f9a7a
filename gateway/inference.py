"""One inference, transport aside: validate, pick the version, decode, run, encode."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from time import perf_counter_ns
from typing import Any, Protocol

import numpy as np

from gateway.batching.queue import ClientWatch
from gateway.errors import BadGateway, BadRequest, DeadlineExceeded, GatewayError, InternalError, Unavailable
from gateway.exchange import Exchange
from gateway.models import Model, ModelManager, ModelVersion, VersionState, no_servable_version
from gateway.protocol.codec import InferRequest, decode_request, encode_response
from gateway.registry.names import parse_version
from gateway.release.shadow import ShadowRunner
from routing.router import Router
from runtimes.base import (
    InferenceFailedError,
    InvalidInputError,
    RemoteFailedError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)

log = logging.getLogger(__name__)

#: Bodies up to this size are decoded on the event loop; larger ones in a worker thread.
#: Measured (loadtests/decode_threshold.py, docs/benchmarks.md): a thread hop costs about
#: 30 us and decoding about 20 ns a byte, so at 64 KiB the hop is under 3% of the decode and
#: the loop stalls 1.3 ms at most below it; for small bodies the hop would cost more than the
#: decode. A thread shortens a large decode's stall but does not remove it: orjson and numpy
#: hold the GIL through each call (max_decompressed_bytes and the body budget bound the rest).
DECODE_INLINE_BYTES = 64 * 1024
#: Large bodies decoded at once. The GIL serialises the decoding anyway; one at a time also
#: bounds its transient memory (a JSON list of numbers takes ten times the body's size).
DECODE_THREADS = 1


@dataclass(frozen=True, slots=True)
class InferResult:
    """An encoded response and what the transport must say about it."""

    body: bytes
    #: Length of the JSON header when binary outputs follow it, else None.
    header_length: int | None
    model_version: str
    role: str
    #: The request's id (from the body, else the ``x-request-id`` header), echoed back.
    request_id: str | None
    #: Work to start once the response has been sent (shadow copies), or None.
    after: Callable[[], None] | None = None


class Client(ClientWatch, Protocol):
    """The client of a request: still there or gone (for the batcher), and its headers."""

    def header(self, name: str) -> str | None:
        """The value of request header ``name`` (lower case), or None."""
        ...


def batch_rows(inputs: dict[str, np.ndarray]) -> int:
    """The batch size of a request: the first dimension, which every input must share."""
    sizes = {int(array.shape[0]) for array in inputs.values()}
    if len(sizes) != 1:
        raise BadRequest(f"inputs disagree on the batch (first) dimension: {sorted(sizes)}")
    return sizes.pop()


def request_options(parameters: dict[str, Any], levels: int) -> tuple[int, float]:
    """``parameters.priority`` (1 highest .. levels; 0 or absent: lowest) and ``timeout`` (us)."""
    priority = parameters.get("priority", 0)
    if type(priority) is not int or not 0 <= priority <= levels:
        raise BadRequest(f"parameter 'priority' must be an integer from 0 to {levels}")
    return priority, request_timeout(parameters)


def request_timeout(parameters: dict[str, Any]) -> float:
    """``parameters.timeout`` (µs) in seconds; 0 when absent."""
    timeout = parameters.get("timeout", 0)
    if type(timeout) is not int or timeout < 0:
        raise BadRequest("parameter 'timeout' must be a non-negative integer (microseconds)")
    return timeout / 1e6


def _remote_error(exc: InferenceFailedError) -> GatewayError:
    """The client's answer to a remote runtime's failure: 503 (circuit open), 504 or 502."""
    if isinstance(exc, RemoteUnavailableError):
        return Unavailable(str(exc), max(1, round(exc.retry_after_s)))
    if isinstance(exc, RemoteTimeoutError):
        return DeadlineExceeded(str(exc))
    return BadGateway(str(exc))


class InferenceService:
    """Serves inference requests from the models the manager holds."""

    def __init__(self, manager: ModelManager, *, rng: random.Random, shadows: ShadowRunner | None = None) -> None:
        self._manager = manager
        self._shadows = shadows
        self._router = Router(rng.random)
        self._decoding = asyncio.Semaphore(DECODE_THREADS)

    async def infer(
        self,
        model_name: str,
        version_text: str | None,
        body: bytes,
        header_length: str | None,
        request_id: str | None = None,
        *,
        client: Client | None = None,
        exchange: Exchange | None = None,
    ) -> InferResult:
        """Run one request; ``version_text`` pins a version, None routes by the model's route.

        A request waiting in a batch queue is withdrawn when its ``client`` goes away. What
        served it (model, version, role, route) is written into ``exchange``.
        """
        pinned = None if version_text is None else parse_version(version_text)
        model = self._manager.model(model_name)
        if pinned is None and model.route is None:
            raise Unavailable(no_servable_version(model))
        decision = self._router.choose(model.route, None if client is None else client.header, pinned)
        mv = model.versions.get(decision.version)
        if mv is None or mv.state is not VersionState.READY:
            mv = self._manager.servable(model, decision.version)  # raises the 404 or 503
        role = decision.role
        if exchange is not None:
            exchange.model, exchange.version, exchange.role, exchange.served = model_name, mv.label, role, mv
            exchange.route_seq = decision.route_seq
        if len(body) <= DECODE_INLINE_BYTES:
            request = decode_request(
                body, header_length, mv.inputs, mv.outputs, model_name=model_name,
                max_batch_size=mv.config.max_batch_size,
            )  # fmt: skip
        else:  # JSON parse and list-to-numpy conversion off the event loop
            async with self._decoding:
                request = await asyncio.to_thread(
                    decode_request, body, header_length, mv.inputs, mv.outputs, model_name=model_name,
                    max_batch_size=mv.config.max_batch_size,
                )  # fmt: skip
        names = [name for name, _ in request.outputs]
        if exchange is not None:
            exchange.inputs = request.inputs
            if request.id is not None:
                exchange.request_id = request.id  # the body's id names the request in logs
        batcher = mv.batcher
        if batcher is not None:
            rows = batch_rows(request.inputs)
            priority, timeout_s = request_options(request.parameters, batcher.priority_levels)
        else:
            timeout_s = request_timeout(request.parameters) if request.parameters else 0.0  # for a remote
        started = perf_counter_ns()
        try:
            if batcher is None:
                executor = mv.executor
                assert executor is not None  # READY versions always have one
                arrays = await executor.run(request.inputs, names, request.elements, timeout_s or None)
                mv.stats.unbatched(started, perf_counter_ns())
            else:
                arrays = await batcher.submit(
                    request.inputs,
                    names,
                    rows,
                    priority=priority,
                    timeout_s=timeout_s,
                    client=client,
                )
                mv.stats.request_done(True, rows, started, perf_counter_ns())
        except (InvalidInputError, InferenceFailedError, GatewayError) as exc:
            mv.stats.request_done(False, 0, started, perf_counter_ns())
            if isinstance(exc, InvalidInputError):
                raise BadRequest(str(exc)) from None
            if isinstance(exc, (RemoteFailedError, RemoteTimeoutError, RemoteUnavailableError)):
                raise _remote_error(exc) from None
            if isinstance(exc, InferenceFailedError):
                log.error("model %r version %d failed a request: %s", model_name, mv.version, exc)
                raise InternalError("inference failed") from None
            raise
        if exchange is not None:
            exchange.outputs = list(zip(names, arrays, strict=True))
        after = None
        if decision.shadows and self._shadows is not None:
            origin = (
                exchange.request_id if exchange is not None else request.id or request_id or "",
                decision.route_seq,
            )
            after = self._mirror(model, mv, decision.shadows, request, body, header_length, names, arrays, origin)
        outputs = [
            (mv.outputs[name], array, binary) for (name, binary), array in zip(request.outputs, arrays, strict=True)
        ]
        response_id = request.id if request.id is not None else request_id
        body_out, json_length = encode_response(model_name, mv.label, response_id, outputs)
        return InferResult(body_out, json_length, mv.label, role, response_id, after)

    def _mirror(  # noqa: PLR0917 - the request's parts, passed on as they are
        self,
        model: Model,
        primary: ModelVersion,
        shadows_owed: tuple[int, ...],
        request: InferRequest,
        body: bytes,
        header_length: str | None,
        names: list[str],
        arrays: list[np.ndarray],
        origin: tuple[str, int],
    ) -> Callable[[], None] | None:
        """The shadow copies the router drew for this request, admitted by the runner, to run after the response."""
        shadows = self._shadows
        assert shadows is not None
        versions = model.versions
        admitted = []
        for version in shadows_owed:
            stats = shadows.admit(model.name, version)
            if stats is not None:
                admitted.append((versions.get(version), stats))
        if not admitted:
            return None

        return partial(
            shadows.run_all, admitted, primary, request.inputs, (body, header_length, model.name),
            outputs=names, answers=arrays, origin=origin,
        )  # fmt: skip
