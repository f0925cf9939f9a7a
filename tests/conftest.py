"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import os

import pytest

# MLflow's client (imported by tests/test_mlflow.py) would report usage from a background thread;
# the gateway turns that off for itself, the tests do it before any import. Child processes (the
# MLflow server, the training script) inherit it.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# Servers started as child processes (tensorgate serve) would all listen for gRPC on 8001, the
# default, and collide; tests that serve gRPC ask for a port of their own (--grpc-port).
os.environ.setdefault("TENSORGATE_GRPC_PORT", "0")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as the server does."""
    return "asyncio"
