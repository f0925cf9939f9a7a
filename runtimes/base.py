"""What every runtime offers the gateway: tensor specs, a blocking ``run`` and ``close``."""

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


class Runtime(Protocol):
    """A loaded model version that computes outputs from inputs; ``run`` blocks."""

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

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Compute the named outputs; BYTES tensors are object arrays of ``bytes`` both ways."""
        ...

    def close(self) -> None:
        """Release the model's memory; ``run`` must not be called afterwards."""
        ...
