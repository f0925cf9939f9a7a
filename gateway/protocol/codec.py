"""Decode V2 inference requests and encode responses (JSON and the binary tensor extension).

Everything a request claims is checked against the model's tensor specs with Python integers
before any tensor memory is allocated: shapes, element counts and byte sizes.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest
from gateway.protocol.tensors import array_to_binary, array_to_json, binary_to_array, json_to_array
from runtimes.base import TensorSpec
from runtimes.datatypes import DATATYPES

MAX_ID_LENGTH = 1024
MAX_RANK = 32
_SCALARS = (str, int, float, bool)


@dataclass(slots=True)
class InferRequest:
    """A decoded request: tensors by name, the outputs wanted, and the request's options."""

    inputs: dict[str, np.ndarray]
    #: (name, binary) for each output to return, in response order.
    outputs: list[tuple[str, bool]]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Input elements in all tensors: what a call's cost scales with.
    elements: int = 0


def parse_header_length(value: str, body_length: int) -> int:
    """The ``Inference-Header-Content-Length`` value: a decimal within the body."""
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise BadRequest("Inference-Header-Content-Length must be a non-negative decimal integer")
    length = int(value)
    if length > body_length:
        raise BadRequest(f"Inference-Header-Content-Length {length} exceeds the body's {body_length} bytes")
    return length


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise BadRequest(f"{where}: 'parameters' must be an object")
    for key, item in value.items():
        if not isinstance(item, _SCALARS):
            raise BadRequest(f"{where}: parameter {key!r} must be a string, number or boolean")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if type(value) is not bool:
        raise BadRequest(f"{where}: parameter {key!r} must be a boolean")
    return value


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (``null``, ``an array``), for error messages."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _json_text(value: Any) -> str:
    """A JSON value as the client wrote it (``[1, null]``, not Python's ``[1, None]``), cut short."""
    # json, not orjson: the standard library writes integers past 64 bits and spaces like ours.
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:200] + "..."


def _shape(name: str, value: Any, spec: TensorSpec, max_batch_size: int) -> tuple[list[int], int]:
    """Validate the claimed shape against the spec; return it and its element count."""
    if value is None:
        raise BadRequest(f"input {name!r} has no shape")
    if type(value) is not list or len(value) > MAX_RANK:
        raise BadRequest(f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} dimensions")
    expected = spec.shape
    if len(value) != len(expected):
        raise BadRequest(f"input {name!r}: shape {_json_text(value)} does not match the model's {list(expected)}")
    count = 1
    for dim, want in zip(value, expected, strict=True):
        if type(dim) is not int or dim < 1:
            raise BadRequest(f"input {name!r}: shape dimensions must be positive integers, got {_json_text(value)}")
        if want >= 0 and dim != want:
            raise BadRequest(f"input {name!r}: shape {_json_text(value)} does not match the model's {list(expected)}")
        count *= dim
    if max_batch_size and value and value[0] > max_batch_size:
        raise BadRequest(f"input {name!r}: batch of {value[0]} exceeds the model's max_batch_size {max_batch_size}")
    return value, count


def decode_request(
    body: bytes,
    header_length: str | None,
    inputs: Mapping[str, TensorSpec],
    outputs: Collection[str],
    *,
    model_name: str,
    max_batch_size: int = 0,
) -> InferRequest:
    """Decode and validate a request for a model with these ``inputs`` and ``outputs``."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        split = parse_header_length(header_length, len(body))
        json_part, binary = body[:split], memoryview(body)[split:]
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if type(doc) is not dict:
        raise BadRequest("the request must be a JSON object")

    request_id = doc.get("id")
    if request_id is not None and (type(request_id) is not str or len(request_id) > MAX_ID_LENGTH):
        raise BadRequest(f"'id' must be a string of at most {MAX_ID_LENGTH} characters")
    try:
        return _decode_doc(doc, request_id, json_part, binary, inputs, outputs, model_name, max_batch_size)
    except BadRequest as exc:
        exc.request_id = request_id  # the body's id names the refused request too (logs, x-request-id)
        raise


def _decode_doc(  # noqa: PLR0917 - decode_request's own arguments, passed on
    doc: dict[str, Any],
    request_id: str | None,
    json_part: bytes,
    binary: memoryview,
    inputs: Mapping[str, TensorSpec],
    outputs: Collection[str],
    model_name: str,
    max_batch_size: int,
) -> InferRequest:
    named = doc.get("model_name")
    if named is not None and named != model_name:
        raise BadRequest("'model_name' in the body differs from the model in the path")
    parameters = _parameters(doc.get("parameters"), "request")

    raw_inputs = doc.get("inputs")
    if type(raw_inputs) is not list:
        raise BadRequest("'inputs' must be a list of tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    elements = 0
    for raw in raw_inputs:
        if type(raw) is not dict or type(raw.get("name")) is not str:
            raise BadRequest("each input must be an object with a string 'name'")
        name = raw["name"]
        spec = inputs.get(name)
        if spec is None:
            raise BadRequest(f"unknown input {name!r:.140}; the model's inputs are {', '.join(inputs)}")
        if name in tensors:
            raise BadRequest(f"input {name!r} is given twice")
        datatype = raw.get("datatype")
        if type(datatype) is not str:
            # Say what is wrong in the protocol's words, never with a Python value (None, [..]).
            if datatype is None:
                raise BadRequest(f"input {name!r} has no datatype")
            raise BadRequest(
                f"input {name!r}: 'datatype' must be a string such as \"FP32\", got {_json_kind(datatype)}"
            )
        if datatype not in DATATYPES:
            raise BadRequest(f"input {name!r}: unknown datatype {datatype!r:.40}")
        if datatype != spec.datatype:
            raise BadRequest(f"input {name!r}: datatype {datatype} does not match the model's {spec.datatype}")
        shape, count = _shape(name, raw.get("shape"), spec, max_batch_size)
        input_parameters = _parameters(raw.get("parameters"), f"input {name!r}")
        size = input_parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
            if size > len(binary) - offset:
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            if "data" in raw:
                raise BadRequest(f"input {name!r}: give either 'data' or binary_data_size, not both")
            tensors[name] = binary_to_array(name, datatype, shape, count, binary[offset : offset + size])
            offset += size
        else:
            if "data" not in raw:
                raise BadRequest(f"input {name!r}: 'data' is missing")
            # Every JSON element takes at least one byte: a bigger count cannot be honest.
            if count > len(json_part):
                raise BadRequest(f"input {name!r}: shape {shape} needs {count} elements, more than the body holds")
            tensors[name] = json_to_array(name, datatype, shape, count, raw["data"])
        elements += count
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the last tensor")
    missing = [name for name in inputs if name not in tensors]
    if missing:
        raise BadRequest(f"missing inputs: {', '.join(missing)}")

    binary_default = _flag(parameters, "binary_data_output", "request")
    requested = doc.get("outputs")
    wanted: list[tuple[str, bool]]
    if requested is None:
        wanted = [(name, binary_default) for name in outputs]
    else:
        if type(requested) is not list:
            raise BadRequest("'outputs' must be a list")
        wanted, seen = [], set()
        for raw in requested:
            if type(raw) is not dict or type(raw.get("name")) is not str:
                raise BadRequest("each requested output must be an object with a string 'name'")
            name = raw["name"]
            if name not in outputs:
                raise BadRequest(f"unknown output {name!r:.140}; the model's outputs are {', '.join(outputs)}")
            if name in seen:
                raise BadRequest(f"output {name!r} is requested twice")
            seen.add(name)
            out_parameters = _parameters(raw.get("parameters"), f"output {name!r}")
            if "binary_data" in out_parameters:
                wanted.append((name, _flag(out_parameters, "binary_data", f"output {name!r}")))
            else:
                wanted.append((name, binary_default))
    return InferRequest(tensors, wanted, request_id, parameters, elements)


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[TensorSpec, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    described: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for spec, array, binary in outputs:
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if binary:
            data = array_to_binary(array)
            entry["parameters"] = {"binary_data_size": len(data)}
            buffers.append(data)
        else:
            entry["data"] = array_to_json(array, spec.name)
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": described}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc)
    if not buffers:
        return header, None
    return header + b"".join(buffers), len(header)
