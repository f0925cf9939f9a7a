"""Triton's load-time overrides, refused the same way over REST and gRPC."""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest


def refuse_load_overrides(parameters: Any) -> None:
    """400 for Triton's load-time overrides: a caller must never believe one took effect.

    Triton's load request may carry ``parameters.config`` (a model configuration that replaces
    the repository's) and ``file:<path>`` entries (model files uploaded in the request). This
    server loads what the repository holds and writes nothing into it, so both are refused
    before anything is loaded, and so is any other parameter it would otherwise ignore.
    """
    if parameters is None:
        return
    if type(parameters) is not dict:
        raise BadRequest("'parameters' must be an object")
    if "config" in parameters:
        raise BadRequest(
            "parameters.config is not supported: tensorgate loads a model's configuration from its "
            "repository (config.toml) and does not override it per load; nothing was loaded"
        )
    files = sorted(key for key in parameters if key.startswith("file:"))
    if files:
        raise BadRequest(
            f"model file uploads ({files[0][:100]!r}) are not supported: tensorgate never writes to its "
            "repository; put the files in the repository, then load; nothing was loaded"
        )
    if parameters:
        unknown = sorted(parameters)[0]
        raise BadRequest(f"unknown load parameter {unknown[:100]!r}; nothing was loaded")
