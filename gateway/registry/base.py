"""The interface every model registry offers: list, configure and fetch versions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.registry.config import ModelConfig


@dataclass(frozen=True, slots=True)
class Artifact:
    """A version fetched into local storage and verified: ready for a runtime to load."""

    model: str
    version: int
    directory: Path
    #: None for a version that a remote server runs (nothing to fetch but its entry).
    model_file: Path | None
    sha256: str | None
    #: Where the version came from, for audits: run id, source, git commit, parameters,
    #: metrics, dataset digests (MLflow); None when the registry knows nothing of it.
    provenance: Mapping[str, Any] | None = None


class RegistryError(Exception):
    """A version cannot be fetched: missing, outside the root, unreadable, or the registry is down.

    ``reason`` is the ``tensorgate_model_load_failures_total`` label: ``registry``, or
    ``timeout`` when a remote registry did not answer in time (the admin call gets a 504).
    """

    def __init__(self, message: str, reason: str = "registry") -> None:
        super().__init__(message)
        self.reason = reason


class Registry(Protocol):
    """Where model versions come from; names are validated by the caller beforehand."""

    def models(self) -> list[str]:
        """The model names the registry holds, sorted."""
        ...

    def versions(self, model: str) -> list[int]:
        """The complete versions of ``model``, ascending; [] for an unknown model."""
        ...

    def config(self, model: str) -> ModelConfig:
        """The model's configuration; raises ConfigError when it is invalid."""
        ...

    def version_config(self, model: str, version: int) -> ModelConfig:
        """The configuration that applies to one version; raises ConfigError when it is invalid."""
        ...

    def fetch(self, model: str, version: int, remote: bool = False) -> Artifact:
        """Make the version available locally and verify it (blocking); ``remote``: no model file needed."""
        ...

    def default_version(self, model: str) -> int | None:
        """The version that serves at start-up when no route was saved (None: the highest)."""
        ...

    def aliases(self, model: str) -> dict[str, int]:
        """The model's aliases (``champion`` -> 3); raises RegistryError when the registry is down."""
        ...

    def model_file(self, model: str, relative: str) -> Path:
        """A file beside the model's versions (a drift reference), checked to stay inside; RegistryError."""
        ...
