"""A runtime wrapper for batching tests: records every call and can hold calls at a gate."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from gateway.registry.base import Artifact
from gateway.registry.config import ModelConfig
from runtimes.base import InferenceFailedError, Runtime, TensorSpec
from runtimes.devices import Devices
from runtimes.onnxrt import OnnxRuntime


class GatedRuntime:
    """Delegates to a real runtime; ``hold()`` makes calls wait until ``release()``."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.calls: list[dict[str, np.ndarray]] = []
        self.entered = threading.Semaphore(0)
        self.fail_next = False
        self.fail_always = False
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()

    platform = "onnxruntime_onnx"

    @property
    def provider(self) -> str:
        return self.inner.provider

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.outputs

    def hold(self) -> None:
        """Calls from now on wait at the gate; ``wait_entered`` counts calls from now on."""
        self.entered = threading.Semaphore(0)
        self._gate.clear()

    def release(self) -> None:
        """Open the gate."""
        self._gate.set()

    def wait_entered(self, timeout_s: float = 10.0) -> None:
        """Block until one more call has started."""
        if not self.entered.acquire(timeout=timeout_s):
            raise TimeoutError("no runtime call started")

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        with self._lock:
            self.calls.append({k: np.array(v, copy=True) for k, v in inputs.items()})
            fail, self.fail_next = self.fail_next or self.fail_always, False
        self.entered.release()
        self._gate.wait(30)
        if fail:
            raise InferenceFailedError("injected failure")
        return self.inner.run(inputs, outputs)

    def close(self) -> None:
        self.inner.close()

    def rows_per_call(self) -> list[int]:
        """The batch size of every call so far."""
        return [int(next(iter(call.values())).shape[0]) for call in self.calls]


class Runtimes:
    """Builds every runtime gated, and keeps them by model name."""

    def __init__(self) -> None:
        self.by_model: dict[str, GatedRuntime] = {}
        self.lock = threading.Lock()

    def __call__(self, artifact: Artifact, config: ModelConfig) -> GatedRuntime:
        runtime = GatedRuntime(OnnxRuntime.load(artifact.model_file, config.onnx, Devices(0, False)))
        with self.lock:
            self.by_model[artifact.model] = runtime
        return runtime
