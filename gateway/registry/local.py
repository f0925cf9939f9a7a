"""The embedded registry: a directory laid out like a Triton model repository.

    models/<name>/config.toml        optional
    models/<name>/<version>/model.onnx
    models/<name>/<version>/config.toml   optional: how this version runs (docs/configuration.md)

A version is complete once its ``model.onnx`` exists, or, for a version served by a remote
Triton server (``runtime = "triton"`` in either file), once its directory exists.

Names and versions are validated before they are joined to the root, and every resolved path
must stay inside the root (symbolic links included).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from gateway.config_error import ConfigError
from gateway.registry.base import Artifact, RegistryError
from gateway.registry.config import (
    CONFIG_FILE,
    ModelConfig,
    load_model_config,
    merge_version_data,
    parse_model_config,
    read_config_data,
)
from gateway.registry.names import MAX_VERSION, is_model_name

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _runtime(data: dict[str, Any], default: str = "onnx") -> str:
    """The ``runtime`` a config file's data names (``default`` if none)."""
    value = data.get("runtime", default)
    return value if isinstance(value, str) else default


def _version_number(name: str) -> int | None:
    if not (name.isascii() and name.isdigit()) or name.startswith("0"):
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


class LocalRegistry:
    """Models in a local directory; a version is complete once its ``model.onnx`` exists."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise RegistryError(f"{path.relative_to(self.root)} resolves outside the repository")
        return resolved

    def models(self) -> list[str]:
        """Model directories with a valid name; anything else is skipped with a warning."""
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            log.error("cannot list the model repository %s: %s", self.root, exc.strerror)
            return []
        names = []
        for entry in entries:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if not is_model_name(entry.name):
                log.warning("skipping %r: not a valid model name", entry.name)
                continue
            names.append(entry.name)
        return names

    def versions(self, model: str) -> list[int]:
        """Numbered subdirectories holding a model file; partial ones are ignored."""
        model_dir = self.root / model
        try:
            entries = list(model_dir.iterdir())
        except OSError:
            return []
        model_data = self._data(model_dir / CONFIG_FILE)
        model_runtime = _runtime(model_data)
        found = []
        for entry in entries:
            number = _version_number(entry.name)
            if number is None or not entry.is_dir():
                continue
            if (entry / MODEL_FILE).is_file() or _runtime(self._data(entry / CONFIG_FILE), model_runtime) == "triton":
                found.append(number)
        if not found and model_runtime == "triton":
            # A model that only names its Triton server has one version: the remote one it names
            # (``[triton] version``), else 1.
            triton = model_data.get("triton")
            remote = str(triton.get("version", "")) if isinstance(triton, dict) else ""
            found.append(_version_number(remote) or 1)
        return sorted(found)

    @staticmethod
    def _data(path: Path) -> dict[str, Any]:
        """A config file's TOML ({} if absent or unreadable: reported when the version loads)."""
        try:
            return read_config_data(path, path.name) or {}
        except ConfigError:
            return {}

    def config(self, model: str) -> ModelConfig:
        """The model's ``config.toml`` (defaults when there is none)."""
        return load_model_config(self.root / model, model)

    def version_config(self, model: str, version: int) -> ModelConfig:
        """The model's configuration with the version's own ``config.toml`` on top, if it has one."""
        source = f"{model}/{version}/{CONFIG_FILE}"
        version_data = read_config_data(self.root / model / str(version) / CONFIG_FILE, source)
        if version_data is None:
            return self.config(model)
        model_data = read_config_data(self.root / model / CONFIG_FILE, f"{model}/{CONFIG_FILE}") or {}
        return parse_model_config(merge_version_data(model_data, version_data, source), source)

    def fetch(self, model: str, version: int, remote: bool = False) -> Artifact:
        """Resolve and hash the version's model file; it is already local.

        ``remote``: the version runs on a remote server, so it needs its directory, not a file.
        """
        directory = self.root / model / str(version)
        model_file = directory / MODEL_FILE
        if remote and not model_file.is_file():
            if not directory.is_dir():
                if version not in self.versions(model):
                    raise RegistryError(f"version {version} of model {model!r} is not in the repository")
                directory = self.root / model  # a model that only names its Triton server
            return Artifact(model, version, self._inside(directory), None, None)
        if not model_file.is_file():
            raise RegistryError(f"version {version} of model {model!r} is not in the repository")
        resolved_dir = self._inside(directory)
        resolved_file = self._inside(model_file)
        try:
            digest = sha256_file(resolved_file)
        except OSError as exc:
            raise RegistryError(f"cannot read {model}/{version}/{MODEL_FILE}: {exc.strerror}") from exc
        return Artifact(model, version, resolved_dir, resolved_file, digest)

    def default_version(self, model: str) -> int | None:
        """None: the highest version serves at start-up."""
        return None

    def aliases(self, model: str) -> dict[str, int]:
        """A directory has no aliases."""
        return {}

    def model_file(self, model: str, relative: str) -> Path:
        """``<root>/<model>/<relative>``, resolved; it must exist and stay inside the model's directory."""
        model_dir = self._inside(self.root / model)
        path = (model_dir / relative).resolve()
        if not path.is_relative_to(model_dir):
            raise RegistryError(f"{model}/{relative} resolves outside the model's directory")
        if not path.is_file():
            raise RegistryError(f"{model}/{relative} does not exist")
        return path
