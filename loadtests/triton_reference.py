"""Reference server for the batching benchmark: NVIDIA Triton (via PyTriton) with its dynamic
batcher, running the same ONNX model through ONNX Runtime in a Python callable.

Triton's Python-backend path is how PyTriton serves models; this is the peer the issue
compares with. Needs ``pip install nvidia-pytriton onnxruntime`` (in any environment: the
benchmark runs this file with the interpreter given by ``--triton-python``).

    python loadtests/triton_reference.py MODEL.onnx HTTP_PORT MAX_BATCH INTRA_OP_THREADS
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    model_path, port, max_batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

    @batch
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        (y,) = session.run(None, {"x": x})
        return {"y": y}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1, metrics_port=port + 2
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="mlp",
            infer_func=infer,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
        )
        triton.serve()


if __name__ == "__main__":
    main()
