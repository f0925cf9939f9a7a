"""Peer: KServe's Python ModelServer (V2 REST), each model run by ONNX Runtime.

python kserve_server.py HTTP_PORT NAME=MODEL.onnx [NAME=MODEL.onnx ...]
"""

from __future__ import annotations

import sys
from typing import Any

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    """An ONNX model behind KServe's V2 protocol."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers: Any = None, response_headers: Any = None) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        outputs = []
        for name, array in zip(self.output_names, results, strict=True):
            output = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or "")


if __name__ == "__main__":
    port = int(sys.argv[1])
    models = [OnnxModel(*spec.split("=", 1)) for spec in sys.argv[2:]]
    ModelServer(http_port=port, grpc_port=port + 1, workers=1, enable_grpc=False).start(models)
