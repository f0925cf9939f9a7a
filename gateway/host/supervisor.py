"""The supervisor of a multi-process host (``workers >= 2`` or ``engine = true``).

It serves nothing itself: it binds the listening sockets, creates the run directory, starts
the host state store, one engine per device and the workers, keeps them running (a worker
that dies is replaced at once, with the same index and sockets; an engine is restarted), and
on SIGTERM or SIGINT drains them in order: workers first (their in-flight requests finish),
then the engines, then the state store. Each event is one log line (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.host.children import child_command, child_environ
from gateway.host.listeners import bind_listener
from gateway.host.roles import HostRole, private_dir, shared_memory_dir
from gateway.host.rundirs import make_run_dir, remove_run_dir, sweep_run_dirs
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.host.state_server import HostStateServer

log = logging.getLogger(__name__)

#: A child that keeps exiting sooner than this after its start is restarted after a delay that
#: doubles (from RESTART_DELAY_S, at the second such exit in a row, up to MAX_RESTART_DELAY_S),
#: so a child that cannot start does not spin the machine; any other exit is restarted at once.
STABLE_S = 10.0
RESTART_DELAY_S = 0.1
MAX_RESTART_DELAY_S = 5.0
#: Exit statuses of a worker that cannot start at all (2: configuration, 3: a port it cannot
#: bind; a worker exits with them only while starting, however long that took): the host
#: stops with that status instead of restarting it forever.
FATAL_STATUSES = (2, 3)
#: How long an engine, and the state store, may take to stop after SIGTERM before being killed.
ENGINE_STOP_S = 15.0
#: How long the GPU probe (``python -m runtimes.devices``) may take.
GPU_PROBE_S = 10.0


def wants_supervisor(settings: Settings) -> bool:
    """Whether ``serve`` runs a supervisor (and children) rather than one process."""
    return settings.workers >= 2 or settings.engine


@dataclass(slots=True)
class Child:
    """One supervised process slot: its role, and the process now filling it (if any)."""

    role: HostRole
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    #: Exits in a row that came before STABLE_S (the restart delay doubles with each).
    quick_exits: int = 0
    keeper: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts, watches and stops the processes of one host."""

    def __init__(
        self,
        settings: Settings,
        argv: Sequence[str],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        grpc_chosen: bool = True,
    ) -> None:
        self.settings = settings
        #: A busy gRPC port stops the host when grpc_port was chosen; the default one is skipped.
        self._grpc_chosen = grpc_chosen
        self._argv = list(argv)
        self._environ = dict(os.environ if environ is None else environ)
        self._clock = clock
        self._listeners: list[socket.socket] = []
        self._run_dir: Path | None = None
        self._children: list[Child] = []
        self._stop = asyncio.Event()
        self._signals = 0
        #: Set when a worker cannot start at all: the host stops and exits with it.
        self._fatal: int | None = None

    def run(self) -> int:
        """Run the host until SIGTERM or SIGINT; the exit status (0 after a graceful stop)."""
        import uvloop

        try:
            self._listeners = self._bind()
        except OSError as exc:
            log.error(
                "supervisor: cannot listen on %s: %s", self.settings.host, exc, extra={"fields": {"event": "host_fail"}}
            )
            return 3  # uvicorn's status when it cannot bind
        if not self._check_grpc_port():
            for sock in self._listeners:
                sock.close()
            return 3
        sweep_run_dirs()  # what killed hosts of this user left
        self._run_dir, lock = make_run_dir()
        private_dir(shared_memory_dir(self._run_dir))  # made before any child, so nobody else can take its name
        try:
            return uvloop.run(self._main())
        finally:
            for sock in self._listeners:
                sock.close()
            remove_run_dir(self._run_dir)
            os.close(lock)

    def _bind(self) -> list[socket.socket]:
        host, ports = self.settings.host, [self.settings.port]
        if self.settings.admin_port:
            ports.append(self.settings.admin_port)
        listeners: list[socket.socket] = []
        try:
            for port in ports:
                listeners.append(bind_listener(host, port))
        except OSError:
            for sock in listeners:
                sock.close()
            raise
        return listeners

    def _check_grpc_port(self) -> bool:
        """Whether the host may start: the gRPC port is free, or busy but not asked for (then off).

        The workers share the gRPC port (each binds it with SO_REUSEPORT, as grpc's listener
        cannot take an inherited socket); a probe without SO_REUSEPORT, here, first makes sure
        nothing else holds it, which the workers' own binds could not tell.
        """
        port = self.settings.grpc_port
        if not port:
            return True
        try:
            bind_listener(self.settings.host, port).close()
        except OSError as exc:
            if self._grpc_chosen:
                fields = {"event": "host_fail"}
                log.error("supervisor: cannot listen for gRPC on port %d: %s", port, exc, extra={"fields": fields})
                return False
            log.warning("supervisor: gRPC port %d is busy (%s): serving without gRPC (set grpc_port to choose a port, "
                        "0 for none)", port, exc)  # fmt: skip
            self._environ["TENSORGATE_GRPC_PORT"] = "0"
        return True

    async def _main(self) -> int:
        assert self._run_dir is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        workers = self.settings.workers
        fds = tuple(sock.fileno() for sock in self._listeners)
        port = self._listeners[0].getsockname()[1]
        try:
            store = await self._start_state_store()
        except Exception as exc:  # an unreadable routes.json, a run dir it cannot bind in
            fields = {"event": "host_fail"}
            log.error("supervisor: cannot start the host state store: %s", exc, extra={"fields": fields})
            return 1
        devices = ("cpu", *await gpu_devices())
        engines = [Child(HostRole(f"engine-{device}", self._run_dir, workers, engines=devices)) for device in devices]
        self._children = engines + [
            Child(HostRole(f"worker-{i}", self._run_dir, workers, fds, engines=devices)) for i in range(workers)
        ]
        started = {"event": "host_start", "workers": workers, "engines": devices, "port": port}
        started["run_dir"] = str(self._run_dir)
        log.info(
            "supervisor: serving http://%s:%d with %d workers and engines %s",
            self.settings.host,
            port,
            workers,
            ", ".join(devices),
            extra={"fields": started},
        )
        for child in self._children:
            child.keeper = asyncio.create_task(self._keep(child), name=child.role.process)
        await self._stop.wait()
        await self._shutdown(store)
        return self._fatal if self._fatal is not None else (0 if self._signals <= 1 else 1)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("supervisor: signal %d: draining the workers", sig, extra={"fields": {"event": "host_drain"}})
            self._stop.set()
            return
        fields = {"event": "host_kill"}
        log.warning("supervisor: signal %d during the drain: killing every process", sig, extra={"fields": fields})
        for child in self._children:
            _send(child, signal.SIGKILL)

    async def _keep(self, child: Child) -> None:
        """Run ``child``'s process, and start it again whenever it exits before the host stops."""
        while not self._stop.is_set():
            process = await self._spawn(child)
            if process is None:
                return
            status = await process.wait()
            lived = self._clock() - child.started
            if self._stop.is_set():
                return
            child.quick_exits = child.quick_exits + 1 if lived < STABLE_S else 0
            kind = "engine" if child.role.is_engine else "worker"
            fields = {"event": f"{kind}_exit", "process": child.role.process, "pid": process.pid, "status": status}
            if not child.role.is_engine and status in FATAL_STATUSES:
                log.error(
                    "supervisor: %s exited with status %d (it cannot start): stopping the host",
                    child.role.process,
                    status,
                    extra={"fields": fields},
                )
                self._fatal = status
                self._stop.set()
                return
            delay = restart_delay(child.quick_exits)
            log.warning(
                "supervisor: %s (pid %d) exited with status %d after %.1f s: restarting in %.1f s",
                child.role.process,
                process.pid,
                status,
                lived,
                delay,
                extra={"fields": {**fields, "lived_s": round(lived, 3), "restart_in_s": delay}},
            )
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process | None:
        env = child_environ(child.role, self._environ, os.getpid())
        try:
            process = await asyncio.create_subprocess_exec(
                *child_command(self._argv),
                env=env,
                pass_fds=child.role.fds,
                stdin=asyncio.subprocess.DEVNULL,
                # A session of its own: Ctrl-C in a terminal reaches the supervisor alone, which
                # then drains the children in order (they die with it: die_with_parent).
                start_new_session=True,
            )
        except OSError as exc:
            log.error("supervisor: cannot start %s: %s", child.role.process, exc)
            self._fatal = 1
            self._stop.set()
            return None
        child.process, child.started = process, self._clock()
        log.info(
            "supervisor: started %s (pid %d)",
            child.role.process,
            process.pid,
            extra={"fields": {"event": "process_start", "process": child.role.process, "pid": process.pid}},
        )
        if self._stop.is_set():  # the stop came while it was starting: it drains with the others
            _send(child, signal.SIGTERM)
        return process

    async def _shutdown(self, store: HostStateServer | None) -> None:
        """Workers drain first, then the engines stop, then the state store closes."""
        # The supervisor's copies close first: once the last worker stops listening, new
        # connections are refused at once instead of waiting in a queue nobody accepts from.
        for sock in self._listeners:
            sock.close()
        workers = [c for c in self._children if not c.role.is_engine]
        engines = [c for c in self._children if c.role.is_engine]
        await self._stop_all(workers, self.settings.graceful_timeout_s + 5.0)
        await self._stop_all(engines, ENGINE_STOP_S)
        if store is not None:
            await self._close_state_store(store)
        log.info("supervisor: every process stopped", extra={"fields": {"event": "host_stop"}})

    async def _stop_all(self, children: list[Child], timeout_s: float) -> None:
        for child in children:
            _send(child, signal.SIGTERM)
        keepers = [c.keeper for c in children if c.keeper is not None]
        if not keepers:
            return
        _, pending = await asyncio.wait(keepers, timeout=timeout_s)
        if pending:
            for child in children:
                if child.keeper in pending:
                    log.warning("supervisor: %s did not stop in %.0f s: killed", child.role.process, timeout_s)
                    _send(child, signal.SIGKILL)
            await asyncio.wait(pending)

    # -- the host state store (gateway/host/state_server.py) ---------------------------------

    async def _start_state_store(self) -> HostStateServer | None:
        """The host's release state store, before any child; None with a ``state_store`` (Redis) of its own."""
        if self.settings.state_store:
            return None
        from gateway.host.state_server import HostStateServer

        assert self._run_dir is not None
        store = HostStateServer(self._run_dir, self.settings.state_dir)
        await store.start()
        return store

    async def _close_state_store(self, store: HostStateServer) -> None:
        """Close the state store, last (every worker that could still write to it is gone)."""
        try:
            await store.close()
        except Exception:  # the host is stopping anyway: say so, and exit as planned
            log.exception("supervisor: closing the host state store failed")


def restart_delay(quick_exits: int) -> float:
    """How long to wait before restarting a child that exited ``quick_exits`` times in a row soon after starting.

    The first such exit is restarted at once too (a worker killed a few seconds after the host
    started is replaced like any other); from the second in a row, the delay doubles.
    """
    return 0.0 if quick_exits <= 1 else min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** (quick_exits - 2))


def _send(child: Child, sig: int) -> None:
    process = child.process
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it exited between the check and the signal
            process.send_signal(sig)


async def gpu_devices() -> list[str]:
    """``cuda0``, ``cuda1``...: one per CUDA device ONNX Runtime can use here, by the workers' own probe.

    Run in a child interpreter (``python -m runtimes.devices``): the supervisor loads neither
    ONNX Runtime nor the CUDA driver. ``nvidia-smi`` is not asked: a container may have CUDA
    without it, and then the workers would place GPU versions on an engine never started.
    """
    try:
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtimes.devices", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        log.warning("supervisor: cannot probe the GPUs (%s): no GPU engine", exc)
        return []
    try:
        out, err = await asyncio.wait_for(probe.communicate(), GPU_PROBE_S)
    except TimeoutError:
        probe.kill()
        await probe.wait()
        log.warning("supervisor: the GPU probe took over %.0f s: no GPU engine", GPU_PROBE_S)
        return []
    lines = out.decode(errors="replace").strip().splitlines()
    text = lines[-1].strip() if lines else ""  # the count is the last line (a library may print before it)
    if probe.returncode != 0 or not text.isdigit():
        problem = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {probe.returncode}"]
        log.warning("supervisor: the GPU probe failed (%s): no GPU engine", problem[0])
        return []
    return [f"cuda{i}" for i in range(int(text))]


def run_supervisor(settings: Settings, argv: Sequence[str], *, grpc_chosen: bool = True) -> int:
    """``tensorgate serve`` as a supervisor: the exit status."""
    sys.stdout.flush()
    return Supervisor(settings, argv, grpc_chosen=grpc_chosen).run()
