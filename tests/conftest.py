"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import os

import pytest

# MLflow's client (imported by tests/test_mlflow.py) would report usage from a background thread;
# the gateway turns that off for itself, the tests do it before any import. Child processes (the
# MLflow server, the training script) inherit it.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as the server does."""
    return "asyncio"
