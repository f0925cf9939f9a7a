"""The runtime kinds a model's ``runtime = "..."`` may name: everything the gateway knows of each.

One entry per kind: its name in config.toml, the platform and backend names the metadata
shows, whether it is remote (connected to on the event loop rather than loaded in a thread),
the parser of its options table and how to load or connect it. Adding a runtime is one entry
here (and its module). The runtime modules are imported only when a version is loaded, so
parsing a configuration (the admin CLI, settings checks) imports no ONNX Runtime, Triton
client or numpy.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimes.options import (
    OnnxOptions,
    OptionsTable,
    TritonOptions,
    parse_onnx_options,
    parse_triton_options,
    triton_selected,
)

if TYPE_CHECKING:
    from runtimes.base import RemoteRuntime, Runtime
    from runtimes.devices import Devices

#: Load a version in this process (blocking): its model file, its options, the devices.
LoadFn = Callable[[Path, Any, "Devices"], "Runtime"]
#: Connect a remote version: its options, the model's name and version here.
ConnectFn = Callable[[Any, str, int], Awaitable["RemoteRuntime"]]


def _nothing_needed(options: Any) -> str | None:
    return None


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
    #: The module that implements it (imported on first use, or by ``import_runtimes``).
    module: str
    #: The options when the config has no table for this kind.
    default_options: Callable[[], Any]
    #: Its table of config.toml (named after the kind) to its options; raises the table's errors.
    parse_options: Callable[[OptionsTable], Any]
    #: When a config selects this kind: what its options lack ("key: problem"), or None.
    check_selected: Callable[[Any], str | None] = _nothing_needed
    #: Set for a local kind.
    load: LoadFn | None = None
    #: Set for a remote kind.
    connect: ConnectFn | None = None


def _load_onnx(model_file: Path, options: OnnxOptions, devices: Devices) -> Runtime:
    from runtimes.onnxrt import OnnxRuntime

    return OnnxRuntime.load(model_file, options, devices)


async def _connect_triton(options: TritonOptions, model: str, version: int) -> RemoteRuntime:
    from runtimes.triton import TritonRuntime

    return await TritonRuntime.connect(options, model, version)


#: Every kind, by name; the first is the default.
RUNTIME_KINDS: dict[str, RuntimeKind] = {
    "onnx": RuntimeKind(
        "onnx", "onnxruntime_onnx", "onnxruntime", remote=False, module="runtimes.onnxrt",
        default_options=OnnxOptions, parse_options=parse_onnx_options, load=_load_onnx,
    ),
    "triton": RuntimeKind(
        "triton", "triton", "triton", remote=True, module="runtimes.triton",
        default_options=TritonOptions, parse_options=parse_triton_options, check_selected=triton_selected,
        connect=_connect_triton,
    ),
}  # fmt: skip
DEFAULT_RUNTIME = "onnx"


def runtime_kind(name: str) -> RuntimeKind:
    """The kind called ``name`` (configurations are validated against RUNTIME_KINDS when parsed)."""
    return RUNTIME_KINDS[name]


def import_runtimes() -> None:
    """Import every kind's module now (blocking), so that no first load imports it on the event loop."""
    for kind in RUNTIME_KINDS.values():
        importlib.import_module(kind.module)
