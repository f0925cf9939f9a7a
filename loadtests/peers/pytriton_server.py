"""Peer: NVIDIA Triton (through PyTriton) with its dynamic batcher, each model run by ONNX Runtime.

    python pytriton_server.py HTTP_PORT NAME=MODEL.onnx [NAME=MODEL.onnx ...]

Runs in an environment of its own (PyTriton pins an older numpy; here only Debian's Python 3.11
runs its Triton stub). SIGTERM stops Triton (PyTriton itself only stops on KeyboardInterrupt).
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
from typing import Any

import numpy as np
import onnxruntime as ort

# Triton's Python-backend stub loads libpython3.11.so dynamically: make it find this interpreter's
# (pyenv's, say) rather than the system's (as tests/triton/pytriton_models.py does).
os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
    p for p in (sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH", "")) if p
)

from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _callable(session: ort.InferenceSession) -> Any:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run(outputs, {name: feeds[name] for name in inputs})
        return dict(zip(outputs, results, strict=True))

    return infer


def main() -> None:
    port = int(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    config = TritonConfig(
        http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1, metrics_port=port + 2
    )
    with Triton(config=config) as triton:
        for spec in sys.argv[2:]:
            name, _, path = spec.partition("=")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            triton.bind(
                model_name=name,
                infer_func=_callable(session),
                inputs=[Tensor(name=i.name, dtype=np.float32, shape=(-1,)) for i in session.get_inputs()],
                outputs=[Tensor(name=o.name, dtype=np.float32, shape=(-1,)) for o in session.get_outputs()],
                config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
            )
        triton.serve()


if __name__ == "__main__":
    main()
