"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port for the test, killed after it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.kill()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, so a disk really fills or turns read-only (``remount``; needs root, as CI has)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)], check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the disk-fault tests need a real small disk")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short private run directory for a host's IPC sockets (their paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
