"""A model version served by a remote NVIDIA Triton server, through tritonclient's asyncio clients.

The gateway keeps its routing, prediction log and metrics; Triton computes. Metadata is read
from the remote at load, tensors travel in Triton's binary format over pooled connections
(HTTP/1.1 keep-alive with aiohttp, or one HTTP/2 channel with gRPC), and outputs are numpy
views of the response buffer. Faults map to statuses the client can act on: refused, dropped
or 5xx is a 502, no answer within the deadline a 504, an open circuit a fast 503, a 4xx a 400
with a fixed message and the status. No message names the remote host or repeats the remote's
text: error bodies are read by clients, the remote's details are the operator's business.
``https://`` and ``grpcs://`` URLs speak TLS, verified against ``ca_file`` (default: the
system's trust store), with an optional client certificate (``cert_file`` and ``key_file``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from runtimes.base import (
    InvalidInputError,
    RemoteFailedError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    RuntimeLoadError,
    TensorSpec,
)
from runtimes.breaker import CircuitBreaker
from runtimes.datatypes import NUMPY_DTYPES
from runtimes.options import TritonOptions

log = logging.getLogger(__name__)

#: Pause before retry n (n = 0, 1, ...) is ``_BACKOFF_S * 2**n``: short, the deadline bounds it.
_BACKOFF_S = 0.025
#: Remote statuses worth another try: the server (or a proxy before it) could not take the call.
_RETRYABLE_HTTP = frozenset({"502", "503"})
_RETRYABLE_GRPC = frozenset({"StatusCode.UNAVAILABLE"})


#: What a TLS connection needs: an SSL context (HTTP) or gRPC channel credentials.
TlsMaterial = Any


def tls_material(scheme: str, options: TritonOptions) -> TlsMaterial:
    """The TLS settings of an ``https``/``grpcs`` URL, read from the configured files (blocking: run in a thread)."""
    try:
        if scheme == "grpcs":
            import grpc  # type: ignore[import-untyped]

            def read(path: str) -> bytes:
                with open(path, "rb") as stream:
                    return stream.read()

            return grpc.ssl_channel_credentials(
                root_certificates=read(options.ca_file) if options.ca_file else None,
                private_key=read(options.key_file) if options.key_file else None,
                certificate_chain=read(options.cert_file) if options.cert_file else None,
            )
        context = ssl.create_default_context(cafile=options.ca_file or None)
        if options.cert_file:
            context.load_cert_chain(options.cert_file, options.key_file or None)
        return context
    except (OSError, ssl.SSLError, ValueError) as exc:
        # The operator's files: their names may be shown to the operator, never the host.
        raise RuntimeLoadError(f"the [triton] TLS files cannot be used: {_file_problem(exc)}", "config") from None


def _file_problem(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return type(exc).__name__


class _Transport:
    """The parts of tritonclient's HTTP and gRPC asyncio clients that differ."""

    def __init__(self, scheme: str, address: str, options: TritonOptions, tls: TlsMaterial = None) -> None:
        #: The protocol, ``http`` or ``grpc``, whether or not over TLS.
        self.scheme = scheme.removesuffix("s")
        if self.scheme == "grpc":
            import tritonclient.grpc.aio as client_module

            self.client: Any = client_module.InferenceServerClient(address, creds=tls)
            self._retryable = _RETRYABLE_GRPC
        else:
            import tritonclient.http.aio as client_module

            # No client-side total timeout: each call runs under its own deadline (asyncio.timeout).
            self.client = client_module.InferenceServerClient(
                address, conn_limit=options.max_connections, conn_timeout=None, ssl=tls is not None, ssl_context=tls
            )
            self._retryable = _RETRYABLE_HTTP
        self.module = client_module
        #: aiohttp asks for gzip by default, and Triton then compresses every answer: CPU on both
        #: sides (its HTTP frontend is often the bottleneck) for a few hundred bytes on a LAN.
        self.headers = {"Accept-Encoding": "identity"} if self.scheme == "http" else None

    async def metadata(self, model: str, version: str) -> dict[str, Any]:
        if self.scheme == "grpc":
            found: dict[str, Any] = await self.client.get_model_metadata(model, version, as_json=True)
            return found
        return dict(await self.client.get_model_metadata(model, version))

    def infer_input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        if self.scheme == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=True)
        return tensor

    def requested_output(self, name: str) -> Any:
        if self.scheme == "grpc":
            return self.module.InferRequestedOutput(name)
        return self.module.InferRequestedOutput(name, binary_data=True)

    def retryable(self, status: str | None) -> bool:
        return status in self._retryable

    @staticmethod
    def client_fault(status: str | None) -> bool:
        """Whether the remote blamed the request (HTTP 4xx, gRPC INVALID_ARGUMENT)."""
        return status is not None and (status.startswith("4") or status == "StatusCode.INVALID_ARGUMENT")


def _spec(entry: Mapping[str, Any]) -> TensorSpec:
    datatype = str(entry.get("datatype", ""))
    if datatype not in NUMPY_DTYPES:
        raise RuntimeLoadError(f"the remote tensor {entry.get('name')!r} has datatype {datatype!r}, unsupported")
    # gRPC metadata as JSON writes int64 as strings.
    return TensorSpec(str(entry["name"]), datatype, tuple(int(d) for d in entry.get("shape", ())))


#: The ``[triton] url`` schemes: the protocol, with an ``s`` for TLS.
SCHEMES = ("http", "https", "grpc", "grpcs")


def split_url(url: str) -> tuple[str, str]:
    """``("http" | "https" | "grpc" | "grpcs", "host:port")`` of a ``[triton] url``."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.netloc:
        raise RuntimeLoadError(f"triton.url must be http(s)://host:port or grpc(s)://host:port, got {url!r}", "config")
    return parts.scheme, parts.netloc


class TritonRuntime:
    """One model version on a remote Triton server; ``infer`` is a coroutine on the event loop."""

    def __init__(
        self,
        transport: _Transport,
        options: TritonOptions,
        remote: tuple[str, str],
        metadata: Mapping[str, Any],
        clock: Callable[[], float],
    ) -> None:
        self._transport = transport
        self._options = options
        self._model, self._version = remote
        self._clock = clock
        self._host = urlsplit(options.url).hostname or ""
        self.platform: str = str(metadata.get("platform") or "triton")
        self.provider = f"triton-{transport.scheme}"
        self.inputs = tuple(_spec(e) for e in metadata.get("inputs", ()))
        self.outputs = tuple(_spec(e) for e in metadata.get("outputs", ()))
        self._types = {spec.name: spec.datatype for spec in self.inputs}
        self.breaker = CircuitBreaker(options.breaker_failures, options.breaker_reset_s, clock)
        self._remote_ready = True
        self._health: asyncio.Task[None] | None = None
        #: Calls tried again after a failure (a metric).
        self.retries = 0

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls, options: TritonOptions, model: str, version: int, clock: Callable[[], float] = time.monotonic
    ) -> TritonRuntime:
        """Check the remote model is ready (loading it if configured to) and read its metadata."""
        scheme, address = split_url(options.url)
        remote = (options.model or model, options.version or str(version))
        tls = await asyncio.to_thread(tls_material, scheme, options) if scheme in ("https", "grpcs") else None
        transport = _Transport(scheme, address, options, tls)
        try:
            async with asyncio.timeout(options.timeout_s):
                await _ensure_ready(transport, options, remote)
                metadata = await transport.metadata(*remote)
        except BaseException as exc:
            await transport.client.close()
            if isinstance(exc, RuntimeLoadError):
                raise
            if isinstance(exc, TimeoutError):
                raise RuntimeLoadError(
                    f"the remote Triton server did not answer within {options.timeout_s:g} s", "timeout"
                ) from None
            if isinstance(exc, Exception):
                raise RuntimeLoadError(f"the remote Triton server cannot be reached ({_kind(exc)})", "remote") from None
            raise
        runtime = cls(transport, options, remote, metadata, clock)
        if not runtime.inputs or not runtime.outputs:
            await transport.client.close()
            raise RuntimeLoadError("the remote model's metadata lists no inputs or no outputs", "remote")
        runtime.start_health_checks()
        return runtime

    def start_health_checks(self) -> None:
        """Re-check the remote model's readiness every ``health_interval_s`` (the task is ours)."""
        if self._options.health_interval_s > 0 and self._health is None:
            self._health = asyncio.create_task(self._check_health(), name=f"triton-health-{self._model}")

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(self._options.health_interval_s)
            try:
                async with asyncio.timeout(min(self._options.timeout_s, self._options.health_interval_s)):
                    ready = bool(await self._transport.client.is_model_ready(self._model, self._version))
            except Exception:  # unreachable counts as not ready; the breaker judges the calls
                ready = False
            if ready != self._remote_ready:
                log.warning("remote Triton model %r version %s is %s", self._model, self._version,
                            "ready again" if ready else "no longer ready")  # fmt: skip
            self._remote_ready = ready

    @property
    def ready(self) -> bool:
        """The remote model was ready at the last check, and the circuit is not open."""
        return self._remote_ready and self.breaker.retry_after_s() == 0

    @property
    def circuit(self) -> str:
        """The circuit breaker's state."""
        return self.breaker.state.value

    @property
    def circuit_opens(self) -> int:
        """Times the circuit has opened."""
        return self.breaker.opened

    # -- inference ---------------------------------------------------------------------------

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Run the remote model within the deadline; retries only what was refused, only in time."""
        options = self._options
        budget = options.timeout_s if not timeout_s else min(timeout_s, options.timeout_s)
        deadline = self._clock() + budget
        tensors = [self._transport.infer_input(name, array, self._types[name]) for name, array in inputs.items()]
        wanted = [self._transport.requested_output(name) for name in outputs]
        attempt = 0
        while True:
            if not self.breaker.allow():
                wait = self.breaker.retry_after_s()
                raise RemoteUnavailableError("the remote Triton server is failing: the circuit is open", wait)
            remaining = deadline - self._clock()
            try:
                return await self._call(tensors, wanted, outputs, remaining, budget)
            except RemoteFailedError as exc:
                pause = _BACKOFF_S * 2**attempt
                if not exc.retryable or attempt >= options.retries:
                    raise
                if self._clock() + pause >= deadline:
                    raise
                attempt += 1
                self.retries += 1
                await asyncio.sleep(pause)

    async def _call(
        self, tensors: list[Any], wanted: list[Any], outputs: Sequence[str], remaining: float, budget: float
    ) -> list[np.ndarray]:
        """One call to the remote, judged by the breaker."""
        breaker = self.breaker
        if remaining <= 0:  # spent before the call (a retry's pause): not the remote's fault
            breaker.abandoned()
            raise RemoteTimeoutError(f"the request's deadline ({budget * 1e3:g} ms) passed before the remote call")
        try:
            async with asyncio.timeout(remaining):
                result = await self._transport.client.infer(
                    self._model,
                    tensors,
                    model_version=self._version,
                    outputs=wanted,
                    # A copy: tritonclient adds Inference-Header-Content-Length to the dict it is given.
                    headers=self._transport.headers and dict(self._transport.headers),
                    # Triton's own deadline (µs): it may drop the request instead of computing it late.
                    timeout=max(1, int(remaining * 1e6)),
                )
        except TimeoutError:
            breaker.failed()
            raise RemoteTimeoutError(
                f"the remote Triton server did not answer within the deadline ({budget * 1e3:g} ms)"
            ) from None
        except asyncio.CancelledError:
            breaker.abandoned()
            raise
        except Exception as exc:
            status = _status(exc)
            if self._transport.client_fault(status):
                breaker.succeeded()  # the server is alive and answered: it is the request
                # A fixed message: the remote's text may name its host, paths or model internals.
                log.info("remote model %r refused a request: %s", self._model, self._clean(exc))
                raise InvalidInputError(
                    f"the remote model refused the input (status {str(status).removeprefix('StatusCode.')})"
                ) from None
            breaker.failed()
            retryable = status is None or self._transport.retryable(status)
            raise RemoteFailedError(_failure_message(exc, status), retryable) from None
        breaker.succeeded()
        return [result.as_numpy(name) for name in outputs]

    def _clean(self, exc: BaseException) -> str:
        """The remote's message, first line only, without the remote host's name."""
        message = exc.message() if hasattr(exc, "message") else str(exc)
        first = str(message).strip().splitlines()[0] if str(message).strip() else "no message"
        if self._host:
            first = first.replace(self._host, "<remote>")
        return first[:300]

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the health checks, unload the remote model if configured to, close the connections."""
        if self._health is not None:
            self._health.cancel()
            await asyncio.gather(self._health, return_exceptions=True)
            self._health = None
        if self._options.unload_remote:
            try:
                async with asyncio.timeout(self._options.timeout_s):
                    await self._transport.client.unload_model(self._model)
                log.info("asked the remote Triton server to unload model %r", self._model)
            except Exception as exc:
                log.warning("could not unload remote model %r: %s", self._model, _kind(exc))
        await self._transport.client.close()


async def _ensure_ready(transport: _Transport, options: TritonOptions, remote: tuple[str, str]) -> None:
    model, version = remote
    if await transport.client.is_model_ready(model, version):
        return
    if not options.load_remote:
        raise RuntimeLoadError(
            f"the remote model {model!r} version {version} is not ready on the Triton server "
            "(set triton.load_remote = true to ask the server to load it)",
            "remote",
        )
    try:
        await transport.client.load_model(model)
    except Exception as exc:
        raise RuntimeLoadError(f"the Triton server refused to load {model!r}: {_kind(exc)}", "remote") from None
    if not await transport.client.is_model_ready(model, version):
        raise RuntimeLoadError(f"the remote model {model!r} version {version} is not ready after loading", "remote")


def _status(exc: BaseException) -> str | None:
    """The remote's status (HTTP code or gRPC code name) when it answered, else None."""
    status = getattr(exc, "status", None)
    if callable(status):
        value = status()
        return str(value) if value is not None else None
    return None


def _kind(exc: BaseException) -> str:
    """What went wrong, by kind only: exception messages may name the host."""
    status = _status(exc)
    if status is not None:
        return f"status {status}"
    code = exc.errno if isinstance(exc, OSError) else None
    name = type(exc).__name__
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if code in (errno.ECONNRESET, errno.EPIPE) or "Disconnected" in name:
        return "connection closed by the server"
    if isinstance(exc, ssl.SSLError) or "Certificate" in name or "SSL" in name:
        return "TLS handshake failed"
    if "Connector" in name:
        return "cannot connect"
    return name


def _failure_message(exc: BaseException, status: str | None) -> str:
    if status is None:
        return f"the remote Triton server failed: {_kind(exc)}"
    if status == "StatusCode.UNAVAILABLE":
        return "the remote Triton server is unavailable"
    return f"the remote Triton server failed (status {status.removeprefix('StatusCode.')})"
