"""What every runtime offers the gateway: tensor specs, and a blocking ``run`` or an async ``infer``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output: its name, V2 datatype and shape (-1 for a dynamic dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class RuntimeLoadError(Exception):
    """A model version could not be loaded; the message is safe to show to an operator."""

    def __init__(self, message: str, reason: str = "invalid_model") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidInputError(Exception):
    """The runtime refused a request's tensors (the client's fault: a 400)."""


class InferenceFailedError(Exception):
    """The runtime failed while computing (the server's fault: a 500 with a generic message)."""


class RemoteFailedError(InferenceFailedError):
    """A remote server refused the connection, dropped it or answered 5xx (a 502).

    The message is shown to clients: it never names the remote host. ``retryable``: the call
    may be tried again (the remote refused it or said it could not take it).
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class RemoteTimeoutError(InferenceFailedError):
    """A remote server did not answer within the request's deadline (a 504)."""


class RemoteUnavailableError(InferenceFailedError):
    """The circuit to a remote server is open: refused without trying (a 503)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelInfo(Protocol):
    """What the gateway knows of a loaded model version, whichever runtime runs it."""

    @property
    def platform(self) -> str:
        """The Triton-style platform name, e.g. ``onnxruntime_onnx``."""
        ...

    @property
    def provider(self) -> str:
        """The execution provider (device) that runs the model."""
        ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs."""
        ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs."""
        ...


class Runtime(ModelInfo, Protocol):
    """A model version computed in this process; ``run`` blocks."""

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Compute the named outputs; BYTES tensors are object arrays of ``bytes`` both ways."""
        ...

    def close(self) -> None:
        """Release the model's memory; ``run`` must not be called afterwards."""
        ...


class RemoteRuntime(ModelInfo, Protocol):
    """A model version computed by a remote server; ``infer`` awaits its answer."""

    @property
    def ready(self) -> bool:
        """Whether the remote model is ready, as last seen (and the circuit to it is not open)."""
        ...

    @property
    def circuit(self) -> str:
        """The circuit breaker's state: ``closed``, ``open`` or ``half_open``."""
        ...

    @property
    def retries(self) -> int:
        """Calls tried again after a failure, since load."""
        ...

    @property
    def circuit_opens(self) -> int:
        """Times the circuit has opened, since load."""
        ...

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Compute the named outputs remotely, within ``timeout_s`` (None: the configured default)."""
        ...

    async def close(self) -> None:
        """Stop background checks and close the connections."""
        ...
