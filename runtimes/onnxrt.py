"""ONNX Runtime: one InferenceSession per loaded model version."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from runtimes.base import InferenceFailedError, InvalidInputError, RuntimeLoadError, TensorSpec
from runtimes.datatypes import ORT_TYPE_TO_V2
from runtimes.devices import Devices, providers_for
from runtimes.external_data import check_external_data
from runtimes.options import OnnxOptions

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATION = {  # keyed by GRAPH_OPTIMIZATION_LEVELS, the names config.toml takes
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

#: ONNX Runtime's own logger writes coloured text lines (``[E:onnxruntime:...]``) straight to
#: stderr, past Python's logging, which would break the JSON log stream. Only FATAL (4) is let
#: through: every error that matters reaches us as an exception, logged (or answered) as ours.
ORT_LOG_SEVERITY = 4

# ONNX Runtime messages carry its source paths ("/onnxruntime_src/...cc:123 ..."): keep them out.
_SOURCE_REF = re.compile(r"\S*/\S+\.(?:cc|h|cpp):\d+\s*(?:\S+\([^)]*\)\s*)?")
_STATUS_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
# Run-time failures that are the server's (memory, the device), not the request's values.
_RESOURCE_FAILURE = re.compile(r"alloc|memory|CUDA|cuDNN|cuBLAS|TensorRT|device|provider", re.IGNORECASE)


def clean_message(exc: BaseException) -> str:
    """ONNX Runtime's message without its status prefix and source references."""
    text = _SOURCE_REF.sub("", str(exc)).strip()
    text = _STATUS_PREFIX.sub("", text)
    return " ".join(text.split())[:500]


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = ORT_TYPE_TO_V2.get(arg.type)
    if datatype is None:
        raise RuntimeLoadError(f"{arg.name!r} has type {arg.type}, which the V2 protocol cannot carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntime:
    """A model version running on ONNX Runtime; ``run`` is thread-safe and blocking."""

    platform = "onnxruntime_onnx"

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._provider: str = session.get_providers()[0]
        self._inputs = tuple(_spec(a) for a in session.get_inputs())
        self._outputs = tuple(_spec(a) for a in session.get_outputs())
        self._bytes_inputs = frozenset(s.name for s in self._inputs if s.datatype == "BYTES")
        self._bytes_outputs = frozenset(s.name for s in self._outputs if s.datatype == "BYTES")

    @classmethod
    def load(cls, model_file: Path, options: OnnxOptions, devices: Devices) -> OnnxRuntime:
        """Check and load ``model_file``; external data must lie beside it. Blocking."""
        try:
            proto = onnx.load_model(str(model_file), load_external_data=False)
        except (DecodeError, ValueError, OSError) as exc:
            raise RuntimeLoadError(f"{model_file.name} is not a readable ONNX model") from exc
        check_external_data(proto, model_file.parent)
        del proto

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = GRAPH_OPTIMIZATION[options.graph_optimization]
        # The process-wide default logger too: it reports what happens before the session has one.
        ort.set_default_logger_severity(ORT_LOG_SEVERITY)
        session_options.log_severity_level = ORT_LOG_SEVERITY
        try:
            chosen = providers_for(options.device, options.tensorrt, devices)
        except ValueError as exc:
            raise RuntimeLoadError(str(exc), reason="device") from exc
        try:
            session = ort.InferenceSession(
                str(model_file),
                session_options,
                providers=[name for name, _ in chosen],
                provider_options=[opts for _, opts in chosen],
            )
        except Exception as exc:  # ONNX Runtime raises its own hierarchy, all of it a refused model
            message = clean_message(exc).replace(str(model_file.parent) + "/", "")
            raise RuntimeLoadError(f"ONNX Runtime refused the model: {message}") from exc
        return cls(session)

    @property
    def provider(self) -> str:
        """The execution provider that runs this session."""
        return self._provider

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs, as ONNX Runtime reports them."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs, as ONNX Runtime reports them."""
        return self._outputs

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run the session; BYTES come and go as ``bytes``, ONNX strings are UTF-8 ``str``."""
        feed: Mapping[str, np.ndarray] = inputs
        if self._bytes_inputs:
            feed = dict(inputs)
            for name in self._bytes_inputs & feed.keys():
                feed[name] = _to_str(name, feed[name])
        try:
            results: list[np.ndarray] = self._session.run(outputs, feed)
        except (ort_errors.InvalidArgument, ort_errors.InvalidGraph) as exc:
            raise InvalidInputError(f"the model refused the input: {clean_message(exc)}") from exc
        except ort_errors.RuntimeException as exc:
            message = clean_message(exc)
            if _RESOURCE_FAILURE.search(message):
                raise InferenceFailedError(message) from exc
            # A kernel that throws on the values it was given (a Cast of "abc" to INT32, ...): the
            # session ran the same graph for other requests, so the input is at fault, not us.
            raise InvalidInputError(f"the model failed on this input: {message}") from exc
        except Exception as exc:
            raise InferenceFailedError(clean_message(exc)) from exc
        if self._bytes_outputs:
            for i, name in enumerate(outputs):
                if name in self._bytes_outputs:
                    results[i] = _to_bytes(results[i])
        return results

    def close(self) -> None:
        """Drop the session; ONNX Runtime frees its memory when the last reference goes."""
        del self._session


def _to_str(name: str, array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    try:
        for i, item in enumerate(flat_in):
            flat_out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"input {name!r}: ONNX strings must be UTF-8 ({exc.reason})") from exc
    return out


def _to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        flat_out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out
