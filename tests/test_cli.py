"""The ``tensorgate`` command, as the README runs it: a real process, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson

from tests.rawhttp import request
from tests.server import wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_the_examples_then_drain_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--repository",
            "examples/models",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
            "--log-dir",
            str(tmp_path / "log"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready")
        body = orjson.dumps(
            {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
        )
        reply = request(port, "POST", "/v2/models/fraud/infer", body, {"Content-Type": "application/json"})
        assert reply.status == 200 and reply.headers["x-model-version"] == "2"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "model 'fraud' version 2 READY on CPUExecutionProvider" in output
    assert "Traceback" not in output


def test_configuration_errors_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "99999"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )
    assert done.returncode == 2
    assert "configuration error: port: must be 0-65535" in done.stderr
