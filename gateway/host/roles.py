"""Which process of a multi-process host this one is, and where its peers listen.

``tensorgate serve --workers N`` (N > 1, or ``engine = true``) runs a supervisor that starts
every child with the same command line and settings, plus the variables below; ``serve``
reads them back with ``HostRole.from_env`` and becomes that child. Every channel between the
processes is a ZeroMQ socket over IPC in the host's run directory (a short private path under
the system's temporary directory: IPC paths are limited to about 100 bytes).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: ``worker-<i>`` or ``engine-<device>`` (``engine-cpu``, ``engine-cuda0``).
ENV_PROCESS = "TENSORGATE_HOST_PROCESS"
#: The run directory holding the IPC sockets.
ENV_DIR = "TENSORGATE_HOST_DIR"
#: A worker's inherited listening sockets: the main port's fd, then the admin port's if any.
ENV_FDS = "TENSORGATE_HOST_FDS"
#: How many workers the host runs (a worker needs it to know when every worker applied a change).
ENV_WORKERS = "TENSORGATE_HOST_WORKERS"
#: The devices the supervisor started an engine for (``cpu,cuda0``): the workers place versions on these.
ENV_ENGINES = "TENSORGATE_HOST_ENGINES"


@dataclass(frozen=True, slots=True)
class HostRole:
    """This process's place on the host."""

    process: str
    run_dir: Path
    workers: int
    fds: tuple[int, ...] = ()
    #: The host's engines, by device (``cpu``, ``cuda0``...), as the supervisor started them.
    engines: tuple[str, ...] = ("cpu",)

    @property
    def is_engine(self) -> bool:
        """An engine process (owns a device's model sessions and batchers)."""
        return self.process.startswith("engine-")

    @property
    def device(self) -> str:
        """The engine's device (``cpu``, ``cuda0``); only for an engine."""
        return self.process.removeprefix("engine-")

    def environ(self) -> dict[str, str]:
        """The variables that make a child this process."""
        env = {
            ENV_PROCESS: self.process,
            ENV_DIR: str(self.run_dir),
            ENV_WORKERS: str(self.workers),
            ENV_ENGINES: ",".join(self.engines),
        }
        if self.fds:
            env[ENV_FDS] = ",".join(str(fd) for fd in self.fds)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HostRole | None:
        """This process's role, or None when it is a whole server on its own (no supervisor)."""
        process = environ.get(ENV_PROCESS)
        if not process:
            return None
        fds = tuple(int(fd) for fd in environ.get(ENV_FDS, "").split(",") if fd)
        engines = tuple(device for device in environ.get(ENV_ENGINES, "cpu").split(",") if device) or ("cpu",)
        return cls(process, Path(environ[ENV_DIR]), int(environ.get(ENV_WORKERS, "1")), fds, engines)


def engine_endpoint(run_dir: Path, device: str) -> str:
    """Where the engine of ``device`` takes requests (a ROUTER socket; workers connect DEALERs)."""
    return f"ipc://{run_dir}/engine-{device}.sock"


def state_endpoint(run_dir: Path) -> str:
    """Where the supervisor's host state store answers (release state shared by the workers)."""
    return f"ipc://{run_dir}/state.sock"


def state_events_endpoint(run_dir: Path) -> str:
    """Where the host state store publishes its change messages (a PUB socket)."""
    return f"ipc://{run_dir}/state-events.sock"


def control_endpoint(run_dir: Path, process: str) -> str:
    """Where a process answers control calls (metrics and statistics snapshots)."""
    return f"ipc://{run_dir}/control-{process}.sock"


def shared_memory_dir(run_dir: Path) -> Path:
    """Where the engine hops' shared-memory tensor files live: a private folder in /dev/shm named
    after the run directory (the run directory itself where there is no /dev/shm).

    A folder of the host's own, mode 0700: in /dev/shm itself, which every local user may write,
    another user could take the files' predictable names first; the supervisor removes the
    folder, and whatever a killed process left in it, when the host stops.
    """
    shm = Path("/dev/shm")
    return shm / run_dir.name if shm.is_dir() else run_dir


def private_dir(path: Path) -> bool:
    """Create ``path`` (0700) if missing; whether it is a real directory of this user, 0700."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
