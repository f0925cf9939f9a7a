"""The bare reference endpoint: Starlette + orjson + one ONNX Runtime session, nothing else.

The baseline benchmark runs it side by side with the gateway, so the gateway's overhead is
measured as a ratio. Usage: ``python loadtests/bare_endpoint.py MODEL.onnx PORT``.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def build(model_path: str) -> Starlette:
    """A one-route app that decodes V2 JSON, runs the session inline and encodes the answer."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])

    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (y,) = session.run(None, {tensor["name"]: x})
        out = {"name": "probability", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}
        return Response(orjson.dumps({"model_name": "fraud", "outputs": [out]}), media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])


if __name__ == "__main__":
    uvicorn.run(
        build(sys.argv[1]),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
