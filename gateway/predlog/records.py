"""One prediction-log record: the JSON line of PRODUCT.md section 4, built off the request path."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from gateway.registry.config import LoggingConfig

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE

#: What the request path hands over: everything needed to build the record later.
#: (ts, request_id, model, version, role, route_seq, inputs, input datatypes, outputs,
#:  output datatypes, status, latency_s, logging config)
Entry = tuple[
    float,
    str,
    str,
    str,
    str,
    int,
    Mapping[str, np.ndarray] | None,
    Mapping[str, str],
    Sequence[tuple[str, np.ndarray]] | None,
    Mapping[str, str],
    int,
    float,
    LoggingConfig,
]


class Timestamps:
    """ISO 8601 UTC timestamps with microseconds, formatted from a cached per-second prefix."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, ts: float) -> str:
        """``2026-11-27T10:00:00.123456Z``."""
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((ts - second) * 1e6):06d}Z"


def _default(value: Any) -> Any:
    """orjson's fallback: arrays it cannot take as they are (not contiguous, float16) and scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot log a {type(value).__name__}")


def tensor(datatype: str, array: np.ndarray) -> dict[str, Any]:
    """A tensor as the log stores it: V2 datatype, shape and row-major data.

    BYTES elements are stored as text when every element is UTF-8, else all as base64 with
    ``"encoding": "base64"``. Either way they are JSON strings, escaped by orjson: no value
    can end a line or forge a field. NaN and infinities are stored as null (JSON has neither).
    """
    if datatype == "BYTES":
        flat = [e if isinstance(e, bytes) else str(e).encode() for e in array.reshape(-1).tolist()]
        try:
            return {"datatype": datatype, "shape": list(array.shape), "data": [e.decode("utf-8") for e in flat]}
        except UnicodeDecodeError:
            data = [base64.b64encode(e).decode("ascii") for e in flat]
            return {"datatype": datatype, "shape": list(array.shape), "data": data, "encoding": "base64"}
    values = array if array.dtype != np.float16 else array.astype(np.float32)
    return {"datatype": datatype, "shape": list(array.shape), "data": values.reshape(-1)}


def hashed(datatype: str, array: np.ndarray, key: bytes) -> dict[str, Any]:
    """A tensor whose elements are replaced by keyed BLAKE2b digests (hex, 16 bytes)."""
    if datatype == "BYTES":
        elements = [e if isinstance(e, bytes) else str(e).encode() for e in array.reshape(-1).tolist()]
    else:
        elements = [np.asarray(e).tobytes() for e in array.reshape(-1)]
    digests = [hashlib.blake2b(e, key=key, digest_size=16).hexdigest() for e in elements]
    return {"datatype": datatype, "shape": list(array.shape), "data": digests, "hashed": True}


class RecordEncoder:
    """Turns entries into JSON lines (with the model's redaction applied)."""

    def __init__(self, hash_key: bytes) -> None:
        self._hash_key = hash_key
        self._ts = Timestamps()

    def encode(self, entry: Entry) -> bytes:
        """One complete line, newline included."""
        ts, request_id, model, version, role, seq, inputs, in_types, outputs, out_types, status, latency, cfg = entry
        logged_inputs = None
        if inputs is not None:
            logged_inputs = {}
            for name, array in inputs.items():
                if name in cfg.exclude_inputs:
                    continue
                datatype = in_types.get(name, "FP32")
                if name in cfg.hash_inputs:
                    logged_inputs[name] = hashed(datatype, array, self._hash_key)
                else:
                    logged_inputs[name] = tensor(datatype, array)
        logged_outputs = None
        if outputs is not None:
            logged_outputs = {name: tensor(out_types.get(name, "FP32"), array) for name, array in outputs}
        record = {
            "ts": self._ts.format(ts),
            "request_id": request_id,
            "model": model,
            "version": version,
            "role": role,
            "route_seq": seq,
            "inputs": logged_inputs,
            "outputs": logged_outputs,
            "status": status,
            "latency_ms": round(latency * 1e3, 3),
        }
        return orjson.dumps(record, default=_default, option=_DUMPS_OPTIONS)
