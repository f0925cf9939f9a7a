"""Server settings: defaults < ``tensorgate.toml`` < ``TENSORGATE_*`` environment < flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.registry.config import ConfigError

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
ENV_PREFIX = "TENSORGATE_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server process needs to start; see docs/configuration.md."""

    repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8000
    state_dir: Path = Path(".tensorgate/state")
    log_dir: Path = Path(".tensorgate/predictions")
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "info"
    graceful_timeout_s: float = 30.0
    #: How long a shadow copy may take before it is abandoned (and counted).
    shadow_timeout_s: float = 5.0
    #: Shadow copies queued or running at once, all models together; more are dropped (and counted).
    shadow_max_inflight: int = 1024
    #: A file holding the admin token (TENSORGATE_ADMIN_TOKEN wins; neither: one is generated).
    admin_token_file: Path | None = None


_TYPES: dict[str, type] = {
    "repository": Path,
    "host": str,
    "port": int,
    "state_dir": Path,
    "log_dir": Path,
    "max_body_bytes": int,
    "log_level": str,
    "graceful_timeout_s": float,
    "admin_token_file": Path,
    "shadow_timeout_s": float,
    "shadow_max_inflight": int,
}
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = _TYPES[key]
    try:
        if kind is Path:
            if not isinstance(value, str) or not value:
                raise ValueError
            return Path(value)
        if kind is int:
            if isinstance(value, bool):
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
        raise ConfigError(f"{source}: {key}: expected {kind.__name__}, got {value!r}") from None


def _validate(settings: Settings) -> Settings:
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port: must be 0-65535, got {settings.port}")
    if settings.max_body_bytes < 1024:
        raise ConfigError(f"max_body_bytes: must be at least 1024, got {settings.max_body_bytes}")
    if settings.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)}")
    if not settings.shadow_timeout_s > 0 or settings.shadow_max_inflight < 1:
        raise ConfigError("shadow_timeout_s must be > 0 and shadow_max_inflight >= 1")
    if not settings.graceful_timeout_s >= 0:
        raise ConfigError("graceful_timeout_s: must be >= 0")
    return settings


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
        for key, value in data.items():
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
