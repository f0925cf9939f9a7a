"""gRPC messages to and from the V2 binary-extension bodies the inference service reads and writes.

The adapter stays thin on purpose: a ``ModelInferRequest`` becomes the same bytes a REST
client would send with every tensor in binary (a small JSON header, then the raw tensors), so
the one validating decoder (gateway/protocol/codec.py) checks gRPC and REST requests alike,
and shadows, the prediction log and routing see one kind of request. Outputs are always asked
for in binary, and come back as ``raw_output_contents`` (what Triton answers too).

What only gRPC can get wrong (typed ``contents`` next to raw ones, typed contents of the wrong
count or range, raw bytes that do not fit the shape) is checked here first, with Python
integers, before anything is allocated, in Triton's words where Triton has them.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb

from gateway.errors import BadRequest
from runtimes.datatypes import NUMPY_DTYPES

_LENGTH = struct.Struct("<I")
#: The typed ``InferTensorContents`` field that carries each datatype (FP16 travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
#: Parameters for features this server does not have: refused rather than silently ignored.
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "classification")


def parameter_value(parameter: Any) -> Any:
    """The Python value of an ``InferParameter`` or ``ModelRepositoryParameter`` (None if unset)."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _parameters(source: Any, where: str) -> dict[str, Any]:
    values = {}
    for key, parameter in source.items():
        if key in _UNSUPPORTED_PARAMETERS:
            raise BadRequest(f"{where}: parameter {key!r} is not supported by this server")
        value = parameter_value(parameter)
        if value is not None:
            values[key] = value
    return values


def _elements(name: str, shape: list[int]) -> int:
    """The element count of a claimed shape, in Python integers (no allocation, however huge)."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise BadRequest(f"input {name!r}: shape dimensions must be non-negative, got {shape}")
        count *= dim
    return count


def _typed_bytes(tensor: Any, shape: list[int]) -> bytes:
    """An input's typed ``contents`` as the binary extension's bytes, count and range checked."""
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in NUMPY_DTYPES:  # FP16: no typed field in the protocol
            raise BadRequest(f"input {name!r}: {datatype} data must be sent in raw_input_contents")
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r:.40}")
    contents = tensor.contents
    for other in CONTENTS_FIELD.values():
        if other != field and len(getattr(contents, other)):
            raise BadRequest(f"input {name!r}: {datatype} data must be in contents.{field}, not contents.{other}")
    values = getattr(contents, field)
    expected = _elements(name, shape)
    if len(values) != expected:
        raise BadRequest(
            f"unexpected number of elements {len(values)} in contents.{field} for input {name!r}, "
            f"expecting {expected} for shape {shape}"
        )
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in values)
    target = NUMPY_DTYPES[datatype]
    if field in ("int_contents", "uint_contents") and target.itemsize < 4 and expected:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(target)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise BadRequest(f"input {name!r}: a value is out of range for {datatype}")
        return wide.astype(target).tobytes()
    return np.asarray(values, dtype=target).tobytes()


def request_body(request: Any, timeout_us: int | None) -> tuple[bytes, str]:
    """A ``ModelInferRequest`` as a binary-extension body and its JSON header's length.

    ``timeout_us`` (from the call's gRPC deadline) replaces a longer ``timeout`` parameter.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"expected {len(request.inputs)} raw_input_contents (one per input), got {len(raw)}; "
            "give every input's data either raw or in contents"
        )
    inputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for index, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"contents field must not be specified when using raw_input_contents for {name!r}")
            data = raw[index]
            dtype = NUMPY_DTYPES.get(datatype)
            if dtype is not None and datatype != "BYTES":
                expected = _elements(name, shape) * dtype.itemsize
                if len(data) != expected:
                    raise BadRequest(f"unexpected total byte size {len(data)} for input {name!r}, expecting {expected}")
        else:
            data = _typed_bytes(tensor, shape)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        parameters = _parameters(tensor.parameters, f"input {name!r}")
        parameters["binary_data_size"] = len(data)
        entry["parameters"] = parameters
        inputs.append(entry)
        buffers.append(data)
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    parameters = _parameters(request.parameters, "request")
    parameters["binary_data_output"] = True
    if timeout_us is not None:
        given = parameters.get("timeout")
        # Absent, 0 (none) or longer than the deadline: the deadline. A malformed one stays, to be refused.
        if given is None or (type(given) is int and (given == 0 or given > timeout_us)):
            parameters["timeout"] = max(1, timeout_us)
    header["parameters"] = parameters
    if request.outputs:
        outputs = []
        for output in request.outputs:
            _parameters(output.parameters, f"output {output.name!r}")
            outputs.append({"name": output.name, "parameters": {"binary_data": True}})
        header["outputs"] = outputs
    head = orjson.dumps(header)
    return head + b"".join(buffers), str(len(head))


def infer_response(body: bytes, header_length: int | None) -> Any:
    """The service's binary-extension response as a ``ModelInferResponse`` with raw outputs."""
    split = len(body) if header_length is None else header_length
    doc = orjson.loads(body[:split])
    response = pb.ModelInferResponse(model_name=doc["model_name"], model_version=doc["model_version"])
    if doc.get("id") is not None:
        response.id = doc["id"]
    view = memoryview(body)
    offset = split
    raw = []
    for output in doc["outputs"]:
        response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        size = output["parameters"]["binary_data_size"]
        raw.append(view[offset : offset + size].tobytes())
        offset += size
    response.raw_output_contents.extend(raw)
    return response
