"""A model and its versions in memory: the catalogue's entries and their lifecycle states."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.batching.batcher import Batcher
from gateway.predlog.records import RecordMeta
from gateway.registry.base import Artifact
from gateway.registry.config import ModelConfig
from gateway.stats import VersionStats
from routing.route import Route
from runtimes.base import RemoteRuntime, TensorSpec
from runtimes.executor import AnyExecutor, RemoteExecutor
from runtimes.kinds import DEFAULT_RUNTIME, RUNTIME_KINDS

if TYPE_CHECKING:
    from gateway.engine.remote import EngineBatcher


class VersionState(enum.StrEnum):
    """The lifecycle of a loaded version, as the admin API reports it."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(eq=False)
class ModelVersion:
    """One version of a model in memory (or failing to get there)."""

    model: str
    version: int
    config: ModelConfig
    state: VersionState = VersionState.LOADING
    artifact: Artifact | None = None
    executor: AnyExecutor | None = None
    #: Set when the model batches (``max_batch_size > 0``).
    batcher: Batcher | EngineBatcher | None = None
    stats: VersionStats = field(default_factory=VersionStats)
    error: str | None = None
    #: Why it failed to load (the ``reason`` label of ``tensorgate_model_load_failures_total``).
    failure: str | None = None
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    #: The input specs as one interned tuple: versions with the same inputs share the object.
    signature: tuple[TensorSpec, ...] = ()
    #: The version number as text, as metrics, logs and responses show it (made once).
    label: str = field(init=False)
    #: Name -> V2 datatype, for the prediction log.
    input_types: dict[str, str] = field(default_factory=dict)
    output_types: dict[str, str] = field(default_factory=dict)
    #: What the prediction log writes of this version besides the request (redaction, run id).
    record_meta: RecordMeta = field(init=False)

    def __post_init__(self) -> None:
        self.label = str(self.version)
        self.record_meta = RecordMeta(self.config.logging)

    @property
    def provider(self) -> str | None:
        """The execution provider in use once READY."""
        return self.executor.runtime.provider if self.executor else None

    @property
    def platform(self) -> str:
        """The Triton platform string."""
        # Before it loads, a version shows the default platform (as it always has, whatever its runtime).
        return self.executor.runtime.platform if self.executor else RUNTIME_KINDS[DEFAULT_RUNTIME].platform

    @property
    def provenance(self) -> Mapping[str, Any] | None:
        """Where the loaded version came from (run id, source, ...), when the registry knows."""
        return self.artifact.provenance if self.artifact is not None else None

    @property
    def remote(self) -> RemoteRuntime | None:
        """The remote runtime that serves this version, if one does."""
        executor = self.executor
        return executor.runtime if isinstance(executor, RemoteExecutor) else None

    @property
    def ready(self) -> bool:
        """READY, and for a remote runtime, its model ready and its circuit not open."""
        remote = self.remote
        return self.state is VersionState.READY and (remote is None or remote.ready)


@dataclass(eq=False)
class Model:
    """A model: its configuration, its versions in memory and its route."""

    name: str
    config: ModelConfig
    available: list[int]
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    route: Route | None = None
    config_error: str | None = None


def no_servable_version(model: Model) -> str:
    """A client's 503 message for a model without a route; the reason (a config error) stays in /admin."""
    why = "its configuration is invalid (reason in /admin/models)" if model.config_error else "not loaded"
    return f"model {model.name!r} has no servable version: {why}"
