"""A real MLflow tracking server for the tests, from .venv-mlflow, with models registered in it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tests.required import server_unavailable
from tests.triton_server import free_ports

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_BIN = ROOT / ".venv-mlflow" / "bin"
LOG_MODELS = ROOT / "tests" / "mlflow" / "log_models.py"


def scorer_weights(version: int) -> np.ndarray:
    """The weights tests/mlflow/log_models.py gives version ``version`` of fraud-scorer."""
    return np.random.default_rng(100 + version).normal(0.0, 0.5, 17).astype(np.float32)


class MlflowServer:
    """``mlflow server`` with a SQLite backend and a local artifact root, on a loopback port."""

    def __init__(self, workdir: Path, environ: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        #: Extra environment for the server process (its settings).
        self.environ = dict(environ or {})
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        #: What log_models.py registered: model -> version -> run id.
        self.runs: dict[str, dict[str, str]] = {}

    def start(self) -> None:
        """Start the server and wait for its health check; skips the test if it cannot start."""
        if not (MLFLOW_BIN / "mlflow").exists():
            server_unavailable("no MLflow server: .venv-mlflow is missing (run scripts/setup-mlflow)")
        with (self.workdir / "mlflow.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(MLFLOW_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
                 "--artifacts-destination", str(self.workdir / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                env={**os.environ, **self.environ},
            )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.workdir / "mlflow.log").read_text(errors="replace")[-2000:]
                server_unavailable(f"the MLflow server could not start: {tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        server_unavailable("the MLflow server did not become healthy within 90 s")

    def log_models(self) -> None:
        """Train and register the test models (tests/mlflow/log_models.py, in .venv-mlflow)."""
        done = subprocess.run(
            [str(MLFLOW_BIN / "python"), str(LOG_MODELS), self.url],
            capture_output=True, text=True, timeout=300, check=True, cwd=self.workdir,
        )  # fmt: skip
        self.runs = json.loads(done.stdout.strip().splitlines()[-1])

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server and its workers (SIGSTOP: a server that accepts but never answers)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        """Stop the server (and anything it started)."""
        process = self.process
        if process is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            process.wait(timeout=10)
        self.signal(signal.SIGKILL)
        self.process = None
