"""A real NVIDIA Triton server (through PyTriton) with the models the Triton-runtime tests call.

    python pytriton_models.py HTTP_PORT GRPC_PORT METRICS_PORT WEIGHTS.npy

Runs in the virtual environment of its own that ``scripts/setup-triton`` makes (PyTriton pins
an older numpy). Models, all with Triton's dynamic batching:

- ``scorer``: ``features`` FP32 [-1, 16] -> ``score`` FP32 [-1, 1] = sigmoid(features @ w + b),
  with ``w`` and ``b`` read from WEIGHTS.npy (17 numbers), the function tests/onnx_models.py's
  ``scorer`` builds as ONNX, so the two can be compared.
- ``sleepy``: ``INPUT0`` FP32 [-1, 1] -> ``OUTPUT0`` = INPUT0, after sleeping the largest
  value in seconds: a slow remote.
- ``broken``: same signature, always raises: the server's own error path.

SIGTERM stops Triton: PyTriton's ``serve()`` only stops on KeyboardInterrupt.
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import time

import numpy as np

# Triton's Python-backend stub loads libpython3.11.so dynamically; without this it may find the
# system's copy instead of this interpreter's, and fail at model initialisation.
os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
    p for p in (sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH", "")) if p
)

from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    weights = np.load(sys.argv[4]).astype(np.float32)
    w, b = weights[:16].reshape(16, 1), weights[16]

    @batch
    def scorer(features: np.ndarray) -> dict[str, np.ndarray]:
        return {"score": (1.0 / (1.0 + np.exp(-(features @ w + b)))).astype(np.float32)}

    @batch
    def sleepy(INPUT0: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(float(INPUT0.max()))
        return {"OUTPUT0": INPUT0}

    @batch
    def broken(INPUT0: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("broken on purpose")

    signal.signal(signal.SIGTERM, _interrupt)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_port=metrics_port,
    )
    batching = ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=500))
    with Triton(config=config) as triton:
        triton.bind(
            model_name="scorer",
            infer_func=scorer,
            inputs=[Tensor(name="features", dtype=np.float32, shape=(16,))],
            outputs=[Tensor(name="score", dtype=np.float32, shape=(1,))],
            config=batching,
        )
        for name, func in (("sleepy", sleepy), ("broken", broken)):
            triton.bind(
                model_name=name,
                infer_func=func,
                inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(1,))],
                outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(1,))],
                config=ModelConfig(max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
            )
        triton.serve()


if __name__ == "__main__":
    main()
