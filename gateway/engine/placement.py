"""Where a worker's version runs: in an engine (which one) or in the worker itself.

A worker of a multi-process host holds one ``EngineClient`` per engine (one per device). A
version placed ``"engine"`` runs in its device's engine; a GPU version always does (one copy
per device, whatever the number of workers); ``"worker"`` (the default) keeps a CPU version in each worker
(measured: cheaper than the hop, even batched). Remote Triton versions need no engine.
"""

from __future__ import annotations

import os
import secrets

from gateway.engine.client import EngineClient
from gateway.engine.wire import ENV_SHM_BYTES, SharedFiles
from gateway.host.roles import HostRole, engine_endpoint, private_dir, shared_memory_dir
from gateway.registry.config import ModelConfig
from runtimes.base import RuntimeLoadError
from runtimes.devices import Devices
from runtimes.kinds import runtime_kind


def shared_files(role: HostRole) -> SharedFiles:
    """The shared-memory files of this host's engine hops (named after the run directory)."""
    threshold = os.environ.get(ENV_SHM_BYTES, "")
    tag = f"{role.run_dir.name}-tensor"
    directory = shared_memory_dir(role.run_dir)
    if not private_dir(directory):  # not ours (another user made it first): the run dir (0700)
        directory = role.run_dir
    if threshold.isdigit():
        return SharedFiles(tag, directory, threshold=int(threshold))
    return SharedFiles(tag, directory)


def engine_device(config: ModelConfig, devices: Devices) -> str:
    """The engine device of a version: ``cpu`` or ``cuda<N>`` (from ``[onnx] device``)."""
    device = config.onnx.device
    if device == "cpu" or (device == "auto" and not devices.cuda_devices):
        return "cpu"
    if device == "auto":
        return "cuda0"
    return f"cuda{device.partition(':')[2] or 0}"


class Engines:
    """The worker's clients of its host's engines, and the placement rule."""

    def __init__(self, role: HostRole, devices: Devices) -> None:
        self.devices = devices
        files = shared_files(role)
        # Unique per worker process: a replaced worker is a new peer for the engine.
        identity = f"{role.process}-{os.getpid()}-{secrets.token_hex(3)}"
        # The supervisor's engines, not this worker's own probe: a version is only ever sent to an
        # engine that was started.
        self.clients = {
            device: EngineClient(engine_endpoint(role.run_dir, device), device=device, identity=identity, files=files)
            for device in role.engines
        }

    async def start(self) -> None:
        """Connect to every engine (each may still be starting)."""
        for client in self.clients.values():
            await client.start()

    async def close(self) -> None:
        """Let go of the engines' versions and close the sockets."""
        for client in self.clients.values():
            await client.close()

    def placing(self, config: ModelConfig) -> EngineClient | None:
        """The engine of a version of this config; None: in this worker, or remote (RuntimeLoadError: none started)."""
        if runtime_kind(config.runtime).remote:
            return None
        device = engine_device(config, self.devices)
        if device == "cpu" and config.where == "worker":
            return None
        client = self.clients.get(device)
        if client is None:  # a GPU version runs in its device's engine, never in each worker
            started = ", ".join(self.clients)
            raise RuntimeLoadError(f"this host runs no engine for {device} (engines: {started})", "engine")
        return client
