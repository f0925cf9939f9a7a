"""The MLflow model registry as a source of versions: ONNX only, cached, verified, with provenance.

Versions are MLflow's model versions (status READY) and aliases (``champion``) name versions.
A version is downloaded once, with MLflow's own client, into ``<cache>/<model>/<version>/``,
then verified: no symbolic links and no path outside that directory; the ONNX flavor (or a
single ``.onnx`` artifact) is the only thing loaded, as pickle-based flavors run code when
loaded; the model file's sha256 is recorded in a manifest (and checked against a ``sha256`` tag
on the model version when the pipeline set one). Later loads verify the cached copy against the
manifest instead of downloading again, and when the tracking server is down the gateway still
starts with what the cache holds.

Where a version's files are is MLflow's answer, and anyone who can write to MLflow can change
it: the location MLflow resolves a version to is checked against ``registry_artifact_allow``
(gateway/registry/allow.py; default: the tracking server's own artifact store) before anything
is fetched, and the download goes to a private (0700) directory whose tree is checked before
any file in it is read.

Each version carries its provenance: the run id, source, git commit, the run's parameters and
metrics, and the digests of the datasets the run logged.

Per-model serving settings (batching, the aliases to follow) stay in ``config.toml`` files
under the repository directory, as for the local registry; only the versions come from MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.config_error import ConfigError
from gateway.registry.allow import AllowRule, allowed, default_rules
from gateway.registry.base import Artifact, RegistryError
from gateway.registry.config import ModelConfig
from gateway.registry.local import LocalRegistry, sha256_file
from gateway.registry.names import MAX_VERSION, is_model_name

log = logging.getLogger(__name__)

MANIFEST = "tensorgate-manifest.json"
#: Artifact URI schemes a model version may come from. Local paths and ``file:`` are refused:
#: a registry entry must not make the gateway read its own filesystem (MLflow's ``source`` CVEs).
ALLOWED_SCHEMES = frozenset(
    {"mlflow-artifacts", "models", "runs", "http", "https", "s3", "gs", "wasbs", "abfss", "hdfs", "dbfs"}
)
#: Model-version tags that carry the expected sha256 of the model file.
CHECKSUM_TAGS = ("sha256", "tensorgate.sha256")
_SEPARATORS = re.compile(r"[/\\]")


def check_source(uri: str) -> None:
    """Refuse artifact URIs that are local paths or that climb out of where they point."""
    decoded = uri
    for _ in range(3):  # double (and triple) encoding must not hide a ".."
        decoded = unquote(decoded)
    parts = urlsplit(decoded)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise RegistryError(f"artifact source {uri!r} refused: only {', '.join(sorted(ALLOWED_SCHEMES))} URIs")
    if ".." in _SEPARATORS.split(parts.path) or ";" in parts.path:
        raise RegistryError(f"artifact source {uri!r} refused: it leaves its directory")


def check_tree(root: Path) -> None:
    """Every downloaded entry is a plain file (with one link) or directory inside ``root``.

    Checked with ``lstat`` before anything in the tree is opened: a symbolic link, a hard link
    to a file elsewhere, a FIFO (an open would block) or a device must not be read by mistake.
    """
    resolved_root = root.resolve()
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        name = path.relative_to(root)
        if stat.S_ISLNK(info.st_mode):
            raise RegistryError(f"artifact entry {name} is a symbolic link: refused")
        if stat.S_ISREG(info.st_mode):
            if info.st_nlink > 1:
                raise RegistryError(f"artifact entry {name} is a hard link: refused")
        elif not stat.S_ISDIR(info.st_mode):
            raise RegistryError(f"artifact entry {name} is not a plain file or directory: refused")
        if not path.resolve().is_relative_to(resolved_root):
            raise RegistryError(f"artifact entry {name} resolves outside the download")


def private_directory(parent: Path) -> Path:
    """A fresh directory only this process's user can enter (0700), for a download in progress."""
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=parent))
    os.chmod(staging, 0o700)  # mkdtemp's mode already; said again so a umask or a port cannot loosen it
    if stat.S_IMODE(staging.lstat().st_mode) != 0o700:
        shutil.rmtree(staging, ignore_errors=True)
        raise RegistryError("the download directory cannot be made private (0700)")
    return staging


def onnx_model_file(root: Path) -> Path:
    """The ONNX file to load: the ONNX flavor's ``data`` in ``MLmodel``, else the only ``.onnx`` file."""
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        import yaml  # type: ignore[import-untyped]

        try:
            doc = yaml.safe_load(mlmodel.read_text("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RegistryError("the MLmodel file is not valid YAML") from exc
        flavors = doc.get("flavors") if isinstance(doc, dict) else None
        if not isinstance(flavors, dict) or "onnx" not in flavors:
            found = ", ".join(sorted(flavors)) if isinstance(flavors, dict) else "none"
            raise RegistryError(
                f"MLflow flavor(s) {found} refused: only the ONNX flavor is served "
                "(pickle-based flavors run code when they are loaded)"
            )
        data = flavors["onnx"].get("data", "model.onnx") if isinstance(flavors["onnx"], dict) else None
        if not isinstance(data, str) or not data:
            raise RegistryError("the MLmodel file's ONNX flavor names no model file")
        path = (root / data).resolve()
        if not path.is_relative_to(root.resolve()):
            raise RegistryError(f"the ONNX flavor's data path {data!r} leaves the artifact directory: refused")
        if not path.is_file():
            raise RegistryError(f"the ONNX flavor's data file {data!r} is missing")
        return path
    onnx_files = sorted(root.rglob("*.onnx"))
    if len(onnx_files) != 1:
        raise RegistryError(f"expected an MLmodel with the ONNX flavor or one .onnx file, found {len(onnx_files)}")
    return onnx_files[0]


def failure(exc: Exception, what: str) -> RegistryError:
    """A RegistryError for a failed call to MLflow, by kind (no host names: admins read it)."""
    text = str(exc)
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return RegistryError(f"{what}: not found in MLflow")
    if "timed out" in text or "Timeout" in type(exc).__name__:
        return RegistryError(f"{what}: the MLflow tracking server did not answer in time", reason="timeout")
    if "Connection refused" in text or "Max retries exceeded" in text or "ConnectionError" in type(exc).__name__:
        return RegistryError(f"{what}: the MLflow tracking server cannot be reached")
    return RegistryError(f"{what}: MLflow failed ({type(exc).__name__})")


class MlflowRegistry:
    """Versions from an MLflow tracking server's model registry, through a verified local cache."""

    def __init__(
        self,
        tracking_uri: str,
        cache_dir: Path,
        config_root: Path,
        *,
        names: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        artifact_allow: tuple[AllowRule, ...] | None = None,
    ) -> None:
        # MLflow's HTTP client reads these per call; its defaults (120 s, 7 retries with backoff)
        # would hold a load for minutes while the tracking server is down. An operator's own
        # values win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        # MLflow's client reports usage to its makers from a background thread: a server in a
        # production network has no business calling out (and its sockets linger).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._tracking_uri = tracking_uri
        #: Where versions may be downloaded from (None: the tracking server's own store).
        self.artifact_allow = artifact_allow if artifact_allow else default_rules(tracking_uri)
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache = cache_dir.resolve()
        self._configs = LocalRegistry(config_root)
        self._names = dict(names or {})
        #: The last successful listing of each model's versions.
        self._known: dict[str, list[int]] = {}

    def remote_name(self, model: str) -> str:
        """The registered model's name in MLflow."""
        return self._names.get(model, model)

    # -- listing -----------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The mapped names, else every registered model whose name is valid here."""
        if self._names:
            return sorted(self._names)
        try:
            registered: list[str] = []
            token = None
            while True:
                page = self._client.search_registered_models(max_results=1000, page_token=token)
                registered += [m.name for m in page]
                token = page.token
                if not token:
                    break
        except Exception as exc:
            log.error("%s; serving what the cache holds", failure(exc, "listing registered models"))
            return self._cached_models()
        names = []
        for name in registered:
            if is_model_name(name) and "'" not in name:
                names.append(name)
            else:
                log.warning("registered model %r skipped: not a valid model name here (see registry_names)", name)
        return sorted(names)

    def versions(self, model: str) -> list[int]:
        """The model's READY versions in MLflow; while MLflow is down, the last listing and the cache.

        Down, a load of a version listed before still goes to ``fetch``, which says why it
        fails (502 or 504), instead of a misleading "not in the repository".
        """
        try:
            found = self._client.search_model_versions(f"name='{self.remote_name(model)}'")
        except Exception as exc:
            log.warning("%s; using the last listing and the cache", failure(exc, f"listing versions of {model!r}"))
            return sorted(set(self._known.get(model, ())) | set(self._cached_versions(model)))
        numbers = []
        for entry in found:
            number = int(entry.version)
            if entry.status == "READY" and 0 < number <= MAX_VERSION:
                numbers.append(number)
        self._known[model] = numbers
        return sorted(numbers)

    def aliases(self, model: str) -> dict[str, int]:
        """The registered model's aliases, alias -> version."""
        try:
            registered = self._client.get_registered_model(self.remote_name(model))
        except Exception as exc:
            raise failure(exc, f"aliases of {model!r}") from None
        return {alias: int(version) for alias, version in (registered.aliases or {}).items()}

    def default_version(self, model: str) -> int | None:
        """The followed alias's version (``[mlflow] follow``), else None (the highest)."""
        try:
            follow = self.config(model).mlflow.follow
        except ConfigError:
            return None
        return self.aliases(model).get(follow) if follow else None

    def config(self, model: str) -> ModelConfig:
        """``<repository>/<model>/config.toml`` (defaults when there is none)."""
        return self._configs.config(model)

    def version_config(self, model: str, version: int) -> ModelConfig:
        """The model's configuration (with ``<repository>/<model>/<version>/config.toml`` on top)."""
        return self._configs.version_config(model, version)

    def model_file(self, model: str, relative: str) -> Path:
        """A file beside the model's ``config.toml`` (a drift reference)."""
        return self._configs.model_file(model, relative)

    # -- fetching ----------------------------------------------------------------------------

    def fetch(self, model: str, version: int, remote: bool = False) -> Artifact:
        """The version from the cache when its copy verifies, else downloaded, checked and cached."""
        target = self.cache / model / str(version)
        cached = self._from_cache(model, version, target)
        if cached is not None:
            return cached
        name = self.remote_name(model)
        what = f"version {version} of {model!r}"
        try:
            entry = self._client.get_model_version(name, str(version))
            if entry.status != "READY":
                raise RegistryError(f"{what} is {entry.status} in MLflow, not READY")
            check_source(entry.source or "")
            uri = self._resolve(self._client.get_model_version_download_uri(name, str(version)))
            check_source(uri)
            self._check_allowed(what, uri)
            run = self._client.get_run(entry.run_id) if entry.run_id else None
        except RegistryError:
            raise
        except Exception as exc:
            raise failure(exc, what) from None
        provenance = _provenance(name, version, entry, run)
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = private_directory(self.cache)
        try:
            try:
                import mlflow.artifacts

                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=uri, dst_path=str(staging), tracking_uri=self._tracking_uri
                    )
                )
            except Exception as exc:
                raise failure(exc, f"downloading {what}") from None
            check_tree(staging)
            root = local if local.is_dir() else local.parent
            if not root.resolve().is_relative_to(staging.resolve()):
                raise RegistryError(f"{what}: the download landed outside the cache")
            model_file = onnx_model_file(root)
            digest = sha256_file(model_file)
            expected = next((entry.tags[t] for t in CHECKSUM_TAGS if t in (entry.tags or {})), None)
            if expected is not None and expected.lower() != digest:
                raise RegistryError(f"{what}: checksum mismatch (the model version's sha256 tag differs)")
            manifest = {"model_file": str(model_file.relative_to(root)), "sha256": digest, "provenance": provenance}
            (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(root, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("model %r version %d downloaded from MLflow (run %s)", model, version, provenance.get("run_id"))
        return Artifact(model, version, target, target / model_file.relative_to(root), digest, provenance)

    def _resolve(self, uri: str) -> str:
        """The place MLflow will download from: ``runs:/`` URIs followed to the run's artifact location."""
        for _ in range(3):
            parts = urlsplit(uri)
            if parts.scheme != "runs":
                return uri
            run_id, _, path = parts.path.lstrip("/").partition("/")
            if not run_id:
                raise RegistryError(f"artifact location {uri!r} names no run")
            base = self._client.get_run(run_id).info.artifact_uri.rstrip("/")
            uri = f"{base}/{path}" if path else base
        raise RegistryError("the artifact location does not resolve (runs: URIs pointing at each other)")

    def _check_allowed(self, what: str, uri: str) -> None:
        """Refuse a resolved location outside ``registry_artifact_allow``, before any byte is fetched."""
        if allowed(uri, self.artifact_allow):
            return
        parts = urlsplit(uri)
        place = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
        log.error("%s: artifact location %s is not in registry_artifact_allow: refused", what, uri)
        raise RegistryError(
            f"{what}: its artifacts are at {place}, which registry_artifact_allow does not list: refused"
        )

    def _from_cache(self, model: str, version: int, target: Path) -> Artifact | None:
        manifest_file = target / MANIFEST
        if not manifest_file.is_file():
            return None
        try:
            manifest = json.loads(manifest_file.read_text("utf-8"))
            model_file = (target / manifest["model_file"]).resolve()
            if not model_file.is_relative_to(target.resolve()) or model_file.is_symlink():
                raise ValueError("model file outside the cached version")
            digest = sha256_file(model_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cached model %r version %d unusable (%s): downloading it again", model, version, exc)
            return None
        if digest != manifest.get("sha256"):
            log.warning("cached model %r version %d changed on disk (sha256): downloading it again", model, version)
            return None
        return Artifact(model, version, target, model_file, digest, manifest.get("provenance"))

    def _cached_models(self) -> list[str]:
        try:
            entries = sorted(self.cache.iterdir())
        except OSError:
            return []
        return [e.name for e in entries if is_model_name(e.name) and self._cached_versions(e.name)]

    def _cached_versions(self, model: str) -> list[int]:
        try:
            entries = list((self.cache / model).iterdir())
        except OSError:
            return []
        found = [int(e.name) for e in entries if e.name.isdigit() and (e / MANIFEST).is_file()]
        return sorted(v for v in found if 0 < v <= MAX_VERSION)


def _provenance(name: str, version: int, entry: Any, run: Any) -> dict[str, Any]:
    """What an audit needs to trace a version back to its run, code and data."""
    provenance: dict[str, Any] = {
        "registry": "mlflow",
        "registered_model": name,
        "model_version": str(version),
        "run_id": entry.run_id or None,
        "source": entry.source,
        "aliases": sorted(entry.aliases or []),
    }
    if run is not None:
        tags = run.data.tags
        provenance |= {
            "git_commit": tags.get("mlflow.source.git.commit"),
            "source_name": tags.get("mlflow.source.name"),
            "user": tags.get("mlflow.user"),
            "experiment_id": run.info.experiment_id,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "datasets": [
                {"name": d.dataset.name, "digest": d.dataset.digest, "source_type": d.dataset.source_type}
                for d in (run.inputs.dataset_inputs if run.inputs else [])
            ],
        }
    return provenance
