"""One prediction-log record: the JSON line of PRODUCT.md section 4, built off the request path."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from gateway.registry.config import LoggingConfig


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """What a record needs of the version that served, beyond the request: redaction and provenance."""

    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: The MLflow run that produced the version; written into each record when known.
    run_id: str | None = None


class Served(Protocol):
    """What a record takes of the version that served (a ``ModelVersion``)."""

    model: str
    #: The version number as text.
    label: str
    input_types: dict[str, str]
    output_types: dict[str, str]
    record_meta: RecordMeta


@dataclass(slots=True)
class PredictionRecord:
    """What the request path hands the prediction log: everything needed to write the line later.

    Slotted, not frozen: a frozen dataclass's ``__init__`` costs twice as much, and nothing
    changes a record once built (``prediction_record`` is the one place that builds them).
    """

    ts: float
    request_id: str
    model: str
    version: str
    #: primary, canary, pinned or shadow.
    role: str
    route_seq: int
    inputs: Mapping[str, np.ndarray] | None
    input_types: Mapping[str, str]
    outputs: Sequence[tuple[str, np.ndarray]] | None
    output_types: Mapping[str, str]
    status: int
    latency_s: float
    meta: RecordMeta


def prediction_record(  # noqa: PLR0917 - one record's fields, in the order the line shows them
    ts: float,
    request_id: str,
    served: Served,
    role: str,
    route_seq: int,
    inputs: Mapping[str, np.ndarray] | None,
    outputs: Sequence[tuple[str, np.ndarray]] | None,
    status: int,
    latency_s: float,
) -> PredictionRecord:
    """The record of one answered request (the dispatcher) or one shadow copy (the shadow runner)."""
    return PredictionRecord(
        ts, request_id, served.model, served.label, role, route_seq, inputs, served.input_types,
        outputs, served.output_types, status, latency_s, served.record_meta,
    )  # fmt: skip


class Timestamps:
    """ISO 8601 UTC timestamps with microseconds, formatted from a cached per-second prefix."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def format(self, ts: float) -> bytes:
        """``2026-11-27T10:00:00.123456Z``."""
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return b"%s.%06dZ" % (self._prefix, int((ts - second) * 1e6))


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
    """Turns entries into JSON lines (with the model's redaction applied).

    The writer encodes every record the gateway serves, so this is written for speed: the
    fields that repeat (model, version, role, route, datatypes, names) are cached as bytes, and
    orjson serializes only the arrays and strings that change; the result is the same JSON as
    ``orjson.dumps`` of the record would give.
    """

    def __init__(self, hash_key: bytes) -> None:
        self._hash_key = hash_key
        self._ts = Timestamps()
        self._heads: dict[tuple[str, str, str, int, str | None], bytes] = {}
        self._tensor_heads: dict[tuple[str, tuple[int, ...], np.dtype[Any]], bytes] = {}

    def encode(self, record: PredictionRecord) -> bytes:
        """One complete line, newline included."""
        model, version, role, seq, meta = record.model, record.version, record.role, record.route_seq, record.meta
        inputs, outputs = record.inputs, record.outputs
        cfg = meta.logging
        key = (model, version, role, seq, meta.run_id)
        head = self._heads.get(key)
        if head is None:
            fields: dict[str, Any] = {"model": model, "version": version, "role": role, "route_seq": seq}
            if meta.run_id is not None:
                fields["run_id"] = meta.run_id
            head = self._heads[key] = orjson.dumps(fields)[1:-1]
        if inputs is None:
            logged_inputs = b"null"
        elif cfg.exclude_inputs or cfg.hash_inputs:
            logged_inputs = self._redacted(inputs, record.input_types, cfg)
        else:
            logged_inputs = self._tensors(inputs.items(), record.input_types)
        logged_outputs = b"null" if outputs is None else self._tensors(outputs, record.output_types)
        return b'{"ts":"%s","request_id":%s,%s,"inputs":%s,"outputs":%s,"status":%d,"latency_ms":%.3f}\n' % (
            self._ts.format(record.ts),
            orjson.dumps(record.request_id),
            head,
            logged_inputs,
            logged_outputs,
            record.status,
            record.latency_s * 1e3,
        )

    def _tensors(self, named: Iterable[tuple[str, np.ndarray]], types: Mapping[str, str]) -> bytes:
        parts = []
        for name, array in named:
            key = (name, array.shape, array.dtype)
            prefix = self._tensor_heads.get(key)
            if prefix is None:
                datatype = types.get(name, "FP32")
                if datatype == "BYTES" or array.dtype == np.float16:
                    parts.append(orjson.dumps(name) + b":" + orjson.dumps(tensor(datatype, array), default=_default))
                    continue
                prefix = b'%s:{"datatype":%s,"shape":%s,"data":' % (
                    orjson.dumps(name),
                    orjson.dumps(datatype),
                    orjson.dumps(array.shape),
                )
                if len(self._tensor_heads) < 4096:  # shapes vary with the batch: keep the cache bounded
                    self._tensor_heads[key] = prefix
            parts.append(
                prefix + orjson.dumps(array.ravel(), option=orjson.OPT_SERIALIZE_NUMPY, default=_default) + b"}"
            )
        return b"{%s}" % parts[0] if len(parts) == 1 else b"{" + b",".join(parts) + b"}"

    def _redacted(self, inputs: Mapping[str, np.ndarray], types: Mapping[str, str], cfg: LoggingConfig) -> bytes:
        kept: dict[str, Any] = {}
        for name, array in inputs.items():
            if name in cfg.exclude_inputs:
                continue
            datatype = types.get(name, "FP32")
            kept[name] = hashed(datatype, array, self._hash_key) if name in cfg.hash_inputs else tensor(datatype, array)
        return orjson.dumps(kept, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)
