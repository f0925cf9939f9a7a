"""The runtime kinds a model's ``runtime = "..."`` may name, and what each one is.

One entry per kind: its name in config.toml, the platform and backend names the metadata
shows, and whether it is remote (connected to on the event loop rather than loaded in a
thread). Plain values: parsing a configuration (the admin CLI, settings checks) must not import
ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuntimeKind:
    """One runtime kind."""

    name: str
    #: Triton's platform name for versions on this runtime (until the runtime reports its own).
    platform: str
    #: The ``backend`` field of the model configuration document.
    backend: str
    #: Runs on another server: connected on the event loop, nothing fetched but the entry.
    remote: bool


#: Every kind, by name; the first is the default.
RUNTIME_KINDS: dict[str, RuntimeKind] = {
    "onnx": RuntimeKind("onnx", "onnxruntime_onnx", "onnxruntime", remote=False),
    "triton": RuntimeKind("triton", "triton", "triton", remote=True),
}
DEFAULT_RUNTIME = "onnx"


def runtime_kind(name: str) -> RuntimeKind:
    """The kind called ``name`` (configurations are validated against RUNTIME_KINDS when parsed)."""
    return RUNTIME_KINDS[name]
