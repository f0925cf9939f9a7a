"""Real engine and worker processes for the engine tests, started without a supervisor.

Each child is ``python -m gateway serve`` with the variables of its ``HostRole`` (as the
supervisor starts it): ``engine-cpu`` binds its ROUTER in the run directory, every worker binds
its own port. Every process is in its own process group and killed at the end, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.host.roles import HostRole, shared_memory_dir
from tests.server import ADMIN_TOKEN, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Host:
    """The engine and workers of a test host."""

    repository: Path
    run_dir: Path
    scratch: Path
    workers: int
    extra: list[str] = field(default_factory=list)
    engine: subprocess.Popen[bytes] | None = None
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, index: int = 0) -> str:
        """The base URL of worker ``index``."""
        return f"http://127.0.0.1:{self.ports[index]}"

    def _spawn(self, process: str, port: int) -> subprocess.Popen[bytes]:
        role = HostRole(process, self.run_dir, self.workers)
        env = {**os.environ, **role.environ(), "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        env.pop("TENSORGATE_HOST_PARENT", None)
        log = open(self.scratch / f"{process}.log", "ab")  # noqa: SIM115 - closed with the process
        args = [sys.executable, "-m", "gateway", "serve", "--repository", str(self.repository)]
        args += ["--port", str(port), "--grpc-port", "0", "--log-level", "info"]
        args += ["--state-dir", str(self.scratch / "state"), "--log-dir", str(self.scratch / "predictions")]
        proc = subprocess.Popen(
            [*args, *self.extra], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_engine(self) -> subprocess.Popen[bytes]:
        """Start (or restart) the CPU engine."""
        self.engine = self._spawn("engine-cpu", free_port())
        return self.engine

    def start_workers(self, ready: bool = True) -> None:
        """Start every worker and wait until each is live (and ready)."""
        for index in range(self.workers):
            port = free_port()
            self.ports.append(port)
            self._spawn(f"worker-{index}", port)
        for index in range(self.workers):
            wait_for(self.url(index) + "/v2/health/live", timeout_s=90)
            if ready:
                wait_for(self.url(index) + "/v2/health/ready", timeout_s=90)

    def log(self, process: str) -> str:
        """What a process logged so far."""
        return (self.scratch / f"{process}.log").read_text(errors="replace")

    def stop(self) -> None:
        """Kill every process group (SIGKILL after a short SIGTERM grace)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@contextmanager
def engine_host(repository: Path, *, workers: int = 1, extra: list[str] | None = None) -> Iterator[Host]:
    """An engine and ``workers`` workers serving ``repository``; everything killed at the end."""
    with tempfile.TemporaryDirectory(prefix="tg-") as run, tempfile.TemporaryDirectory(prefix="tg-scratch-") as scratch:
        host = Host(repository, Path(run), Path(scratch), workers, extra or [])
        try:
            host.start_engine()
            host.start_workers()
            yield host
        except BaseException:
            for name in ["engine-cpu", *(f"worker-{i}" for i in range(workers))]:
                path = Path(scratch) / f"{name}.log"
                if path.exists():
                    sys.stderr.write(f"---- {name} ----\n{path.read_text(errors='replace')[-6000:]}\n")
            raise
        finally:
            host.stop()
            shared = shared_memory_dir(Path(run))  # what a supervisor removes at its stop
            if shared != Path(run):
                shutil.rmtree(shared, ignore_errors=True)
