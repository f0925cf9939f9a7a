"""The metadata documents of the V2 protocol (and Triton's model configuration)."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.models import Model, ModelVersion, VersionState
from runtimes.base import TensorSpec
from runtimes.datatypes import TRITON_CONFIG_TYPES
from runtimes.kinds import runtime_kind

SERVER_NAME = "tensorgate"
#: The protocol extensions this server implements, named and ordered as Triton lists them:
#: the repository extension (behind the admin token), priority and timeout request parameters
#: (``schedule_policy``), model configuration, binary tensors, request parameters, statistics.
EXTENSIONS = (
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
)


def server_metadata() -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def public_status(mv: ModelVersion) -> dict[str, Any]:
    """What anyone may know of a version: its ``state``, and its ``provider`` and ``sha256`` once known.

    Nothing here says where the model came from or why it failed: provenance (run parameters,
    users, source URIs, git commits) and error texts are for operators, under ``/admin``.
    """
    status: dict[str, Any] = {"state": mv.state.value}
    if mv.provider is not None:
        status["provider"] = mv.provider
    if mv.artifact is not None and mv.artifact.sha256 is not None:
        status["sha256"] = mv.artifact.sha256
    return status


def version_status(mv: ModelVersion) -> dict[str, Any]:
    """A loaded version as ``GET /admin/models`` shows it: its public status, provenance, remote and error."""
    status = public_status(mv)
    if mv.provenance:
        status["provenance"] = dict(mv.provenance)
    remote = mv.remote
    if remote is not None:
        status["remote_ready"] = remote.ready
        status["circuit"] = remote.circuit
    if mv.error is not None:
        status["error"] = mv.error
    return status


def model_metadata(model: Model, mv: ModelVersion) -> dict[str, Any]:
    """``GET /v2/models/{m}[/versions/{v}]``: V2 fields, plus the public status under ``parameters``."""
    ready = sorted(v for v, m in model.versions.items() if m.state is VersionState.READY)
    parameters: dict[str, Any] = {"version": str(mv.version), **public_status(mv)}
    return {
        "name": model.name,
        "versions": [str(v) for v in ready],
        "platform": mv.platform,
        "inputs": [_tensor(s) for s in mv.inputs.values()],
        "outputs": [_tensor(s) for s in mv.outputs.values()],
        "parameters": parameters,
    }


def _config_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {"name": spec.name, "data_type": TRITON_CONFIG_TYPES[spec.datatype], "dims": dims}


def model_config(model: Model, mv: ModelVersion) -> dict[str, Any]:
    """``GET /v2/models/{m}[/versions/{v}]/config`` in Triton's model-configuration shape."""
    batched = mv.config.max_batch_size > 0
    return {
        "name": model.name,
        "platform": mv.platform,
        "backend": runtime_kind(mv.config.runtime).backend,
        "max_batch_size": mv.config.max_batch_size,
        "input": [_config_tensor(s, batched) for s in mv.inputs.values()],
        "output": [_config_tensor(s, batched) for s in mv.outputs.values()],
    }
