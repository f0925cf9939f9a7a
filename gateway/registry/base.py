"""The interface every model registry offers: list, configure and fetch versions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.registry.config import ModelConfig


@dataclass(frozen=True, slots=True)
class Artifact:
    """A version fetched into local storage and verified: ready for a runtime to load."""

    model: str
    version: int
    directory: Path
    model_file: Path
    sha256: str


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

    def fetch(self, model: str, version: int) -> Artifact:
        """Make the version available locally and verify it (blocking)."""
        ...

    def model_file(self, model: str, relative: str) -> Path:
        """A file beside the model's versions (a drift reference), checked to stay inside; RegistryError."""
        ...
