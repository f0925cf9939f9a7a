"""A real NVIDIA Triton server for the tests, started through PyTriton in .venv-triton."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tests.required import server_unavailable

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
MODELS_SCRIPT = ROOT / "tests" / "triton" / "pytriton_models.py"
EXPLICIT_SCRIPT = ROOT / "tests" / "triton" / "explicit_server.py"
#: The models pytriton_models.py serves.
MODELS = ("scorer", "sleepy", "broken")
#: PyTriton starts Triton, then binds each model (a Python stub process each): tens of seconds.
START_TIMEOUT_S = 180.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on loopback right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def scorer_weights() -> np.ndarray:
    """The 17 numbers (w, then b) both the local ONNX scorer and Triton's use."""
    return np.random.default_rng(7).normal(0.0, 0.5, 17).astype(np.float32)


class TritonServer:
    """One Triton server process on loopback ports; ``start`` and ``stop`` may be repeated."""

    def __init__(self, workdir: Path, *, explicit: bool = False) -> None:
        """PyTriton's server with MODELS ready, or (``explicit``) Triton's binary in explicit
        model-control mode with ``lazy_scorer`` in its repository, not loaded."""
        self.workdir = workdir
        self.explicit = explicit
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.weights_file = workdir / "weights.npy"
        np.save(self.weights_file, scorer_weights())
        self.log_file = workdir / "triton.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        """The ``[triton] url`` for HTTP."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """The ``[triton] url`` for gRPC."""
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        """Start Triton and wait until every model is ready; skips the test if it cannot start."""
        if not TRITON_PYTHON.exists():
            server_unavailable("no Triton server: .venv-triton is missing (run scripts/setup-triton)")
        ports = [str(p) for p in (self.http_port, self.grpc_port, self.metrics_port)]
        script = [str(EXPLICIT_SCRIPT), str(self.workdir)] if self.explicit else [str(MODELS_SCRIPT)]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(TRITON_PYTHON), *script, *ports, str(self.weights_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # our signals go to PyTriton and the Triton server alike
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                server_unavailable(f"the Triton server could not start (exit {self.process.returncode}): {tail}")
            if self.live() if self.explicit else all(self.model_ready(m) for m in MODELS):
                return
            time.sleep(0.25)
        self.stop()
        server_unavailable(f"the Triton server did not become ready within {START_TIMEOUT_S:g} s")

    def model_ready(self, model: str) -> bool:
        """Whether Triton says ``model`` is ready (asked directly)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/models/{model}/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def live(self) -> bool:
        """Whether the server answers its liveness probe."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/live", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def __enter__(self) -> TritonServer:
        """Started (or the test skipped, as ``start`` does); stopped when the block ends."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        """Kill Triton at once, as a crash would (the whole process group)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop Triton gracefully (SIGTERM), killing it if it lingers."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        # The Python stubs of the models live in the same group: make sure none survives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None
