"""Server settings: defaults < ``tensorgate.toml`` < ``TENSORGATE_*`` environment < flags."""

from __future__ import annotations

import importlib.util
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

from gateway.config_error import ConfigError
from gateway.lifecycle import DEFAULT_INFLIGHT_BODY_BYTES
from gateway.registry.allow import parse_rules
from gateway.registry.names import is_model_name

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: A compressed body may inflate to 16 MiB (about 2 M JSON numbers, a second or two to decode).
DEFAULT_MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024
ENV_PREFIX = "TENSORGATE_"
#: ``workers = "auto"``: one per usable CPU, at most this many (the largest count measured; a
#: bigger machine can set ``workers`` explicitly). See docs/operations.md, "Workers".
AUTO_WORKERS_CAP = 8
#: An explicit ``workers`` beyond this is a typo, not a plan (each worker holds its own memory).
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server process needs to start; see docs/configuration.md."""

    repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8000
    admin_port: int = 0
    grpc_port: int = 8001
    state_dir: Path = Path(".tensorgate/state")
    log_dir: Path = Path(".tensorgate/predictions")
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    max_inflight_body_bytes: int = DEFAULT_INFLIGHT_BODY_BYTES
    log_level: str = "info"
    log_format: str = "json"
    access_log: bool = False
    strict_readiness: bool = True
    allow_empty: bool = False
    graceful_timeout_s: float = 30.0
    max_concurrent_requests: int = 1024
    max_connections: int = 4096
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    shadow_timeout_s: float = 5.0
    shadow_max_inflight: int = 1024
    shadow_max_inflight_bytes: int = 256 * 1024 * 1024
    admin_token_file: Path | None = None
    predlog: bool = True
    predlog_policy: str = "drop"
    predlog_queue_size: int = 65536
    predlog_queue_bytes: int = 256 * 1024 * 1024
    predlog_block_timeout_s: float = 10.0
    predlog_rotate_bytes: int = 64 * 1024 * 1024
    predlog_rotate_s: float = 3600.0
    predlog_compress: bool = False
    predlog_flush_interval_s: float = 0.01
    registry_kind: str = "local"
    registry_tracking_uri: str = ""
    registry_cache_dir: Path = Path(".tensorgate/cache")
    registry_names: str = ""
    registry_timeout_s: float = 10.0
    registry_poll_s: float = 30.0
    registry_artifact_allow: str = ""
    console: bool = True
    state_store: str = ""
    state_store_password_file: Path | None = None
    workers: int = 1
    engine: bool = False


#: One line per setting: the flag's help, and docs/configuration.md's description.
_HELP = {
    "repository": "model repository directory",
    "host": "address to listen on (0.0.0.0 in a container)",
    "port": "port to listen on",
    "admin_port": "a port of its own for /admin and /v2/repository (0: they answer on port, as inference does)",
    "grpc_port": "port for the Open Inference Protocol over gRPC (inference.GRPCInferenceService; 0: off)",
    "state_dir": "routes, history and the generated admin token",
    "log_dir": "the prediction log",
    "max_body_bytes": "request body limit in bytes, on the wire and decompressed",
    "max_decompressed_bytes": "what a compressed (gzip, deflate) inference body may inflate to, in bytes",
    "max_inflight_body_bytes": "bytes of inference request bodies held at once (all requests); more get 503",
    "log_level": "critical, error, warning, info or debug",
    "log_format": "server logs as json (one object per line) or text",
    "access_log": "log every inference request (JSON: id, model, version, role, status, latency)",
    "strict_readiness": "ready only when every routed version is READY (else: when every routed version of "
    "at least one model is)",
    "allow_empty": "start even when the repository is missing or holds no model (for registries filled later)",
    "graceful_timeout_s": "on SIGTERM, how long in-flight and queued requests may take",
    "max_concurrent_requests": "inference requests in flight at once; more get 503 at once",
    "max_connections": "open connections; more are closed at once",
    "header_timeout_s": "a request's headers must arrive within this (else 408, close)",
    "body_timeout_s": "a request's body must arrive within this after its headers",
    "send_timeout_s": "a client that accepts none of its response for this long is disconnected",
    "keepalive_timeout_s": "idle keep-alive connections are closed after this",
    "max_header_bytes": "request line and headers larger than this get 431",
    "max_headers": "requests with more header fields get 431",
    "shadow_timeout_s": "a shadow copy taking longer is abandoned and counted",
    "shadow_max_inflight": "shadow copies in flight at once (all models); more are dropped",
    "shadow_max_inflight_bytes": "bytes of the inputs and answers shadow copies in flight hold (all models); "
    "more are dropped",
    "admin_token_file": "a file holding the admin bearer token",
    "predlog": "log every prediction with its input under log_dir (docs/prediction-log.md)",
    "predlog_policy": "when the log cannot keep up or its disk fails: drop (count and go on) or block",
    "predlog_queue_size": "records waiting to be written, at most",
    "predlog_queue_bytes": "bytes of the arrays of the records waiting to be written, at most",
    "predlog_block_timeout_s": "block policy: how long a request waits for room in the log before it gets 503",
    "predlog_rotate_bytes": "start a new log file past this size",
    "predlog_rotate_s": "start a new log file after this many seconds",
    "predlog_compress": "gzip log files once rotated",
    "predlog_flush_interval_s": "how often the writer wakes to write what is queued",
    "registry_kind": "where versions come from: local (the repository directory) or mlflow (docs/mlflow.md)",
    "registry_tracking_uri": "mlflow: the tracking server, e.g. http://mlflow:5000",
    "registry_cache_dir": "mlflow: where downloaded versions are kept and verified",
    "registry_names": "mlflow: local=registered names, comma-separated (default: every registered model, same name)",
    "registry_timeout_s": "mlflow: a call to the tracking server gives up after this",
    "registry_poll_s": "mlflow: how often followed aliases are checked",
    "registry_artifact_allow": "mlflow: where versions may be downloaded from, comma-separated scheme://host[/prefix] "
    "or scheme: (default: the tracking server's own artifact store)",
    "console": "serve the operator console at /console (on admin_port when that is set; docs/console.md)",
    "state_store": "routes, history and load intents shared by a fleet: redis://[:password@]host:6379/0 "
    "(rediss:// for TLS); empty: state_dir, one replica (docs/operations.md)",
    "state_store_password_file": "a file holding the state store's password (when the URL has none)",
    "workers": f"HTTP worker processes sharing the port: N (1-{MAX_WORKERS}) or auto (one per usable CPU, at most "
    f"{AUTO_WORKERS_CAP}); 2 or more run a supervisor and an engine per device (docs/operations.md)",
    "engine": "run models in an engine process per device even with one worker (workers >= 2 always does)",
}


def setting_types() -> dict[str, type]:
    """Each setting's type (Path, str, int, float or bool), by name."""
    hints = get_type_hints(Settings)
    return {f.name: _base_type(hints[f.name]) for f in fields(Settings)}


def setting_help() -> dict[str, str]:
    """Each setting's one-line description, by name."""
    return {f.name: _HELP[f.name] for f in fields(Settings)}


def _base_type(hint: Any) -> type:
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if args else hint  # type: ignore[no-any-return]


_TYPES = setting_types()
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: Text settings a TOML file may also give as an array of strings.
_LIST_SETTINGS = frozenset({"registry_artifact_allow"})


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """``[registry] kind = ...`` is ``registry_kind``; ``[registry.names]`` a name mapping."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                pairs = isinstance(inner, dict)  # [registry.names]: local = "registered name"
                flat[f"{key}_{sub}"] = ",".join(f"{k}={v}" for k, v in inner.items()) if pairs else inner
        else:
            flat[key] = value
    return flat


def registry_names(settings: Settings) -> dict[str, str]:
    """``registry_names`` as local name -> registered model name."""
    names: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in settings.registry_names.split(","))):
        local, _, remote = pair.partition("=")
        names[local.strip()] = remote.strip()
    return names


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, lowered by a cgroup v2/v1 CPU quota (rounded up)."""
    return max(1, math.ceil(usable_cpu_time()))


def usable_cpu_time() -> float:
    """CPU seconds per second this process may use: its affinity mask, or a cgroup quota below it (1.5)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return min(float(count), quota) if quota is not None else float(count)


def _cgroup_cpu_quota() -> float | None:
    """The container's CPU limit (``cpu.max`` 150000 100000 -> 1.5), None when unlimited or unknown."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # cgroup v2
        quota, period = (text[0], text[1]) if len(text) == 2 else ("max", "1")
    except OSError:
        try:  # cgroup v1
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return q / p if q > 0 and p > 0 else None


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = _TYPES[key]
    if key == "workers" and isinstance(value, str) and value.strip().lower() == "auto":
        value = min(usable_cpus(), AUTO_WORKERS_CAP)  # resolved here: every child sees the same count
    if key in _LIST_SETTINGS and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)  # a TOML array, as the comma-separated text the environment gives
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if kind is Path:
            if not isinstance(value, str) or not value:
                raise ValueError
            return Path(value)
        if kind is int:
            # int(2.5) would be 2: a fractional TOML number is refused, not truncated (2.0 is 2).
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except ValueError:
        expected = "auto or an int" if key == "workers" else kind.__name__
        given = str(value).lower() if isinstance(value, bool) else repr(value)  # as TOML spells it
        raise ConfigError(f"{source}: {key}: expected {expected}, got {given}") from None


def _validate(settings: Settings) -> Settings:
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port: must be 0-65535, got {settings.port}")
    if not 0 <= settings.admin_port <= 65535 or (settings.admin_port and settings.admin_port == settings.port):
        raise ConfigError(f"admin_port: must be 0 (off) or 1-65535 and differ from port, got {settings.admin_port}")
    clash = settings.grpc_port and settings.grpc_port in (settings.port, settings.admin_port)
    if not 0 <= settings.grpc_port <= 65535 or clash:
        raise ConfigError(
            f"grpc_port: must be 0 (off) or 1-65535 and differ from port and admin_port, got {settings.grpc_port}"
        )
    if settings.max_body_bytes < 1024:
        raise ConfigError(f"max_body_bytes: must be at least 1024, got {settings.max_body_bytes}")
    if settings.max_decompressed_bytes < 1024:
        raise ConfigError(f"max_decompressed_bytes: must be at least 1024, got {settings.max_decompressed_bytes}")
    if settings.max_inflight_body_bytes < settings.max_body_bytes:
        raise ConfigError(
            f"max_inflight_body_bytes: must be at least max_body_bytes ({settings.max_body_bytes}), "
            f"got {settings.max_inflight_body_bytes}"
        )
    if not settings.send_timeout_s > 0:
        raise ConfigError("send_timeout_s: must be > 0")
    if not 1 <= settings.workers <= MAX_WORKERS:
        raise ConfigError(f"workers: must be auto or 1-{MAX_WORKERS}, got {settings.workers}")
    if settings.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)}")
    if not settings.shadow_timeout_s > 0 or settings.shadow_max_inflight < 1:
        raise ConfigError("shadow_timeout_s must be > 0 and shadow_max_inflight >= 1")
    if settings.log_format not in ("json", "text"):
        raise ConfigError("log_format: must be json or text")
    for name in ("graceful_timeout_s", "header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"{name}: must be > 0")
    for name in ("max_concurrent_requests", "max_connections", "max_headers"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name}: must be at least 1")
    if settings.predlog_queue_bytes < 1 or settings.shadow_max_inflight_bytes < 1:
        raise ConfigError("predlog_queue_bytes and shadow_max_inflight_bytes must be at least 1")
    if not settings.predlog_block_timeout_s > 0:
        raise ConfigError("predlog_block_timeout_s: must be > 0")
    if settings.predlog_policy not in ("drop", "block"):
        raise ConfigError("predlog_policy: must be drop or block")
    if settings.predlog_queue_size < 1 or settings.predlog_rotate_bytes < 1024:
        raise ConfigError("predlog_queue_size must be >= 1 and predlog_rotate_bytes >= 1024")
    if not settings.predlog_rotate_s > 0 or not 0 < settings.predlog_flush_interval_s <= 10:
        raise ConfigError("predlog_rotate_s must be > 0 and predlog_flush_interval_s in (0, 10]")
    if settings.max_header_bytes < 1024:
        raise ConfigError(f"max_header_bytes: must be at least 1024, got {settings.max_header_bytes}")
    _validate_registry(settings)
    if settings.state_store and not settings.state_store.startswith(("redis://", "rediss://")):
        raise ConfigError("state_store: a redis:// or rediss:// URL (empty: the local state_dir)")
    return settings


def _validate_registry(settings: Settings) -> None:
    if settings.registry_kind not in ("local", "mlflow"):
        raise ConfigError(f"registry_kind: must be local or mlflow, got {settings.registry_kind!r}")
    if settings.registry_kind == "mlflow":
        if not settings.registry_tracking_uri.startswith(("http://", "https://")):
            raise ConfigError("registry_tracking_uri: with registry_kind = mlflow, an http(s):// tracking server")
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("registry_kind = mlflow needs the mlflow extra: pip install 'tensorgate[mlflow]'")
    if not settings.registry_timeout_s > 0 or not settings.registry_poll_s > 0:
        raise ConfigError("registry_timeout_s and registry_poll_s must be > 0")
    parse_rules(settings.registry_artifact_allow)  # ConfigError names the bad entry
    for pair in filter(None, (p.strip() for p in settings.registry_names.split(","))):
        local, eq, remote = pair.partition("=")
        if not eq or not is_model_name(local.strip()) or not remote.strip() or "'" in remote:
            raise ConfigError(f"registry_names: expected local=registered pairs, got {pair!r}")


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources in order of precedence; unknown keys and bad values are errors."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text("utf-8"))
        except OSError as exc:
            raise ConfigError(f"{config_file}: cannot be read ({exc.strerror})") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{config_file}: not valid TOML ({exc})") from None
        for key, value in _flatten(data).items():
            if key not in _TYPES:
                raise ConfigError(f"{config_file}: {key}: unknown key")
            coerced = _coerce(key, value, str(config_file))
            # Relative paths in the file are relative to the file, as a reader would expect.
            if isinstance(coerced, Path) and not coerced.is_absolute():
                coerced = config_file.parent / coerced
            values[key] = coerced
    for key in _TYPES:
        env_value = environ.get(ENV_PREFIX + key.upper())
        if env_value is not None:
            values[key] = _coerce(key, env_value, ENV_PREFIX + key.upper())
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    return _validate(replace(Settings(), **values))
