"""Tensor data in both V2 encodings (JSON lists and the binary extension) to numpy and back.

Policy, applied the same way for every input:
- no silent casting: JSON strings, booleans or nulls in a numeric tensor are refused, and so
  are fractions in an integer tensor; integers are accepted in floating-point tensors;
- integers out of the datatype's range are refused (no wrap-around), and so are finite JSON
  numbers that overflow to infinity in FP16/FP32;
- JSON has no NaN or Infinity (they are not valid JSON and the parser refuses them); a model
  that needs them gets them through the binary extension, where any bit pattern is allowed;
- ``data`` may be flat or nested row-major, but never nested deeper than the tensor's rank.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from gateway.errors import BadRequest
from runtimes.datatypes import NUMPY_DTYPES

_INTEGER = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
_FLOAT = frozenset({"FP16", "FP32", "FP64"})
_LENGTH = struct.Struct("<I")
#: The Python types (as parsed from JSON) each datatype's elements may have: no silent casting.
_JSON_TYPES: dict[str, frozenset[type]] = {
    **dict.fromkeys(_INTEGER, frozenset({int})),
    **dict.fromkeys(_FLOAT, frozenset({int, float})),
    "BOOL": frozenset({bool}),
}
_TYPE_ERRORS = {
    **{d: f"{d} data must be integers" for d in _INTEGER},
    **{d: f"{d} data must be numbers" for d in _FLOAT},
    "BOOL": "BOOL data must be true or false",
}
_FLOAT_LIMITS = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}


def _nesting_depth(data: list[Any], limit: int) -> int:
    """Depth of the first-element chain; stops counting once past ``limit``."""
    depth, item = 0, data
    while type(item) is list and depth <= limit:
        depth += 1
        if not item:
            break
        item = item[0]
    return depth


def json_to_array(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    """Decode one input's JSON ``data`` into an array of ``shape`` (already validated)."""
    if type(data) is not list:
        raise BadRequest(f"input {name!r}: 'data' must be a list")
    if _nesting_depth(data, len(shape)) > len(shape):
        raise BadRequest(f"input {name!r}: 'data' nesting depth exceeds the tensor's rank {len(shape)}")
    if datatype == "BYTES":
        return _json_bytes(name, shape, count, data)
    if data and type(data[0]) is not list:
        return _flat_json(name, datatype, shape, count, data)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest(f"input {name!r}: 'data' is ragged or holds non-numbers") from None
    kind = array.dtype.kind
    if array.size != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} elements, got {array.size}")
    target = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        if kind != "b":
            raise BadRequest(f"input {name!r}: BOOL data must be true or false")
        return array.astype(target, copy=False).reshape(shape)
    if datatype in _INTEGER:
        if kind not in "iu":
            # numpy infers float64 for a mix of small ints and ints past int64: check exactly.
            return _exact_integers(name, datatype, shape, data)
        if array.dtype != target:
            info = np.iinfo(target)
            if array.min() < info.min or array.max() > info.max:
                raise BadRequest(f"input {name!r}: a value is out of range for {datatype}")
        return array.astype(target, copy=False).reshape(shape)
    if kind not in "iuf":
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers")
    if datatype == "FP64":
        result = array.astype(target, copy=False)
    else:
        with np.errstate(over="ignore"):  # overflow is detected just below, as a 400
            result = array.astype(target, copy=False)
    # JSON numbers are finite, so infinity here means overflow in the narrower type.
    if np.count_nonzero(np.isinf(result)):
        raise BadRequest(f"input {name!r}: a value is out of range for {datatype}")
    return result.reshape(shape)


def _flat_json(name: str, datatype: str, shape: list[int], count: int, data: list[Any]) -> np.ndarray:
    """The common case, a flat list: checked with C-level list builtins, then one conversion."""
    if len(data) != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} elements, got {len(data)}")
    if not set(map(type, data)) <= _JSON_TYPES[datatype]:
        raise BadRequest(f"input {name!r}: {_TYPE_ERRORS[datatype]}")
    limit = _FLOAT_LIMITS.get(datatype)
    # Checked before converting, so that an overflow never happens (nor warns).
    if limit is not None and (max(data) > limit or min(data) < -limit):
        raise BadRequest(f"input {name!r}: a value is out of range for {datatype}")
    try:
        array = np.array(data, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:  # numpy refuses integers out of the dtype's range
        raise BadRequest(f"input {name!r}: a value is out of range for {datatype}") from None
    return array.reshape(shape)


def _exact_integers(name: str, datatype: str, shape: list[int], data: list[Any]) -> np.ndarray:
    items = np.array(data, dtype=object).reshape(-1)
    info = np.iinfo(NUMPY_DTYPES[datatype])
    lo, hi = int(info.min), int(info.max)
    for item in items:
        if type(item) is not int:
            raise BadRequest(f"input {name!r}: {datatype} data must be integers")
        if not lo <= item <= hi:
            raise BadRequest(f"input {name!r}: a value is out of range for {datatype}")
    return np.array(items.tolist(), dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def _json_bytes(name: str, shape: list[int], count: int, data: list[Any]) -> np.ndarray:
    try:
        items = np.array(data, dtype=object).reshape(-1)
    except ValueError:
        raise BadRequest(f"input {name!r}: 'data' is ragged") from None
    if items.size != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} elements, got {items.size}")
    out = np.empty(count, dtype=object)
    for i, item in enumerate(items):
        if type(item) is not str:
            raise BadRequest(f"input {name!r}: BYTES data must be strings")
        out[i] = item.encode("utf-8", "surrogatepass")
    return out.reshape(shape)


def binary_to_array(name: str, datatype: str, shape: list[int], count: int, buffer: memoryview) -> np.ndarray:
    """Decode one input's bytes from the binary extension into an array of ``shape``."""
    if datatype == "BYTES":
        return _binary_bytes(name, shape, count, buffer)
    target = NUMPY_DTYPES[datatype]
    expected = count * target.itemsize
    if len(buffer) != expected:
        raise BadRequest(
            f"input {name!r}: binary_data_size is {len(buffer)} bytes but shape {shape} of {datatype} needs {expected}"
        )
    array = np.frombuffer(buffer, dtype=target)
    if datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
        raise BadRequest(f"input {name!r}: BOOL bytes must be 0 or 1")
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def _binary_bytes(name: str, shape: list[int], count: int, buffer: memoryview) -> np.ndarray:
    # Every element carries a 4-byte length: check the count against the size before looping.
    if count * _LENGTH.size > len(buffer):
        raise BadRequest(f"input {name!r}: {len(buffer)} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    offset, end = 0, len(buffer)
    for i in range(count):
        if offset + _LENGTH.size > end:
            raise BadRequest(f"input {name!r}: BYTES data holds fewer than {count} elements")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += _LENGTH.size
        if length > end - offset:
            raise BadRequest(f"input {name!r}: a BYTES element's length runs past the data")
        out[i] = bytes(buffer[offset : offset + length])
        offset += length
    if offset != end:
        raise BadRequest(f"input {name!r}: BYTES data holds more than {count} elements")
    return out.reshape(shape)


def array_to_json(array: np.ndarray, name: str) -> list[Any]:
    """Flattened row-major ``data`` for a JSON output; BYTES must be UTF-8 to travel as JSON."""
    flat = array.reshape(-1)
    if flat.dtype != object:
        return flat.tolist()  # type: ignore[no-any-return,unused-ignore]
    try:
        return [item.decode("utf-8") for item in flat]
    except UnicodeDecodeError:
        raise BadRequest(f"output {name!r} is not UTF-8: request it with binary_data") from None


def array_to_binary(array: np.ndarray) -> bytes:
    """The binary extension's bytes for one output (length-prefixed elements for BYTES)."""
    if array.dtype != object:
        return np.ascontiguousarray(array).tobytes()
    parts = []
    for item in array.reshape(-1):
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)
