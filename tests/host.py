"""A real multi-process host (``tensorgate serve --workers N``) for the tests: supervisor, engines, workers.

``serve_host(repository, workers=2)`` starts ``python -m gateway serve`` as a process of its
own (its own session) on an ephemeral loopback port, waits until every worker has loaded its
models and the port answers ready, and yields a ``Host``. The processes of the host are found
without psutil: ``Host.children()`` scans /proc for the supervisor's children and reads each
one's role from its environment (``TENSORGATE_HOST_PROCESS``: ``worker-0``, ``engine-cpu``).
Every log line of every process (JSON, each child's tagged with ``process`` and ``pid``) goes
to ``Host.log_path``; ``Host.records()`` reads them. On exit the supervisor gets SIGTERM (a
graceful drain, bounded), and anything still alive after it is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.host.roles import ENV_PROCESS
from tests.server import ADMIN_TOKEN, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Host:
    """A running multi-process host."""

    process: subprocess.Popen[bytes]
    port: int
    url: str
    log_path: Path
    state_dir: Path
    log_dir: Path
    workers: int
    #: ``admin_port`` when the host has one, else ``port`` (where admin calls go).
    admin_port: int = 0
    #: The log's bytes, kept when the block ends (its temporary directory is removed).
    final_log: bytes | None = None

    def children(self) -> dict[str, int]:
        """The live children of the supervisor by role (``worker-0`` -> pid), from /proc."""
        return children_of(self.process.pid)

    def pids(self, kind: str = "worker") -> dict[str, int]:
        """The children of one kind (``worker`` or ``engine``) by role."""
        return {role: pid for role, pid in self.children().items() if role.startswith(kind + "-")}

    def records(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far by the supervisor and its children."""
        out = []
        for line in self._log().splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(orjson.JSONDecodeError):  # a line being written
                    out.append(orjson.loads(line))
        return out

    def wait_until(self, check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        """Poll ``check`` until it holds (a supervisor that exits fails at once, with its log)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the supervisor exited ({self.process.returncode}):\n{self.tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"{what} within {timeout_s} s; log:\n{self.tail()}")

    def wait_workers_loaded(self, timeout_s: float = 90.0) -> dict[str, int]:
        """Wait until every worker process now running logged its initial load; its pids by role."""

        def loaded() -> bool:
            pids = self.pids("worker")
            if len(pids) != self.workers:
                return False
            done = {r.get("pid") for r in self.records() if str(r.get("message", "")).startswith("initial load done")}
            return all(pid in done for pid in pids.values())

        self.wait_until(loaded, f"{self.workers} workers loaded", timeout_s)
        return self.pids("worker")

    def tail(self, lines: int = 40) -> str:
        """The last lines of the host's log (for failure messages)."""
        text = self._log().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _log(self) -> bytes:
        return self.log_path.read_bytes() if self.final_log is None else self.final_log

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM to the supervisor; its exit status once it (and so the host) stopped."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        """The supervisor's exit status; past ``timeout_s``, a failure that shows the host's log."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the host did not exit within {timeout_s} s; log:\n{self.tail(60)}") from None


def children_of(parent: int) -> dict[str, int]:
    """The live processes whose parent is ``parent``, by their ``TENSORGATE_HOST_PROCESS`` role."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # ``pid (comm) state ppid ...``: comm may hold spaces, so split after its ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) != parent or fields[0] == "Z":  # a zombie: dead, not yet reaped
                continue
        except (OSError, ValueError, IndexError):  # it exited while we looked
            continue
        role = _role_of(int(entry))
        if role is not None:
            found[role] = int(entry)
    return found


def _role_of(pid: int) -> str | None:
    """A process's host role from its environment; None when it has none (or is gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = ENV_PROCESS.encode() + b"="
    for variable in environ:
        if variable.startswith(prefix):
            return variable[len(prefix) :].decode()
    return None


def _flags(settings: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


@contextmanager
def serve_host(
    repository: Path,
    *,
    workers: int = 2,
    ready: bool = True,
    environ: Mapping[str, str] | None = None,
    admin_listener: bool = False,
    **settings: Any,
) -> Iterator[Host]:
    """Run ``tensorgate serve --workers N`` on ``repository`` until the block ends.

    ``settings`` become flags (``graceful_timeout_s=5`` -> ``--graceful-timeout-s 5``; a bool is
    ``--x``/``--no-x``). State and the prediction log go to a fresh temporary directory unless
    given; the admin token is ``tests.server.ADMIN_TOKEN``; gRPC is off unless ``grpc_port`` is
    given; ``log_level`` is info (the helper reads the workers' load records). ``environ`` adds
    variables. With ``ready`` the block starts once every worker loaded and the port is ready.
    ``workers=1`` needs ``engine=True`` (else ``serve`` is one process: use tests.server).
    """
    if workers < 2 and not settings.get("engine"):
        raise ValueError("one worker without the engine is a single process, not a host: pass engine=True")
    scratch = tempfile.TemporaryDirectory(prefix="tensorgate-host-")
    base = Path(scratch.name)
    settings.setdefault("state_dir", base / "state")
    settings.setdefault("log_dir", base / "predictions")
    settings.setdefault("grpc_port", 0)
    settings["log_level"] = "info"
    port = free_port()
    if admin_listener:
        settings["admin_port"] = free_port()
    args = ["serve", "--repository", str(repository), "--port", str(port), "--workers", str(workers)]
    args += _flags(settings)
    env = {**os.environ, "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN, **(environ or {})}
    env.pop(ENV_PROCESS, None)
    log_path = base / "host.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    host = Host(
        process,
        port,
        f"http://127.0.0.1:{port}",
        log_path,
        Path(settings["state_dir"]),
        Path(settings["log_dir"]),
        workers,
        admin_port=int(settings.get("admin_port") or port),
    )
    seen: set[int] = set()
    try:
        if ready:
            seen.update(host.wait_workers_loaded().values())
            wait_for(host.url + "/v2/health/ready", timeout_s=60)
        yield host
    finally:
        seen.update(host.children().values())
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                seen.update(host.children().values())
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for pid in seen:  # a child the supervisor could not stop (and still one of ours: not a reused pid)
            if _role_of(pid) is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        host.final_log = log_path.read_bytes()
        scratch.cleanup()
