"""Whether the real-server suites (Triton, MLflow, the browser) must run: in CI and in ./scripts/test they must.

A suite whose server cannot start is skipped on a developer's machine, but under
``TENSORGATE_REQUIRE_SERVERS=1`` (set by ./scripts/test) or ``CI=true`` the same event is a
failure: CI must not pass green when the tests that talk to real servers never ran.
``TENSORGATE_REQUIRE_SERVERS=0`` turns it off explicitly. Other skips (no GPU, no tmpfs)
are not affected.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import NoReturn

import pytest

_TRUE = ("1", "true", "yes", "on")


def servers_required(environ: Mapping[str, str] | None = None) -> bool:
    """``TENSORGATE_REQUIRE_SERVERS`` if set, else whether ``CI`` is true."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("TENSORGATE_REQUIRE_SERVERS", "").strip().lower()
    if explicit:
        return explicit in _TRUE
    return environ.get("CI", "").strip().lower() in _TRUE


def server_unavailable(message: str) -> NoReturn:
    """A real server the test needs cannot start: skip, or fail where the servers are required."""
    if servers_required():
        pytest.fail(f"{message} (the real-server suites are required here: TENSORGATE_REQUIRE_SERVERS or CI)", False)
    pytest.skip(message)


def import_or_unavailable(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip``, except that a missing module fails where the servers are required."""
    if servers_required():
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=reason)
