"""A host's run directory: made and locked by its supervisor; left by a killed one, removed by the next.

A supervisor removes its run directory (IPC sockets, metrics snapshots) and its shared-memory
folder when it stops; one killed with SIGKILL cannot. Each run directory therefore holds a
``lock`` file on which the supervisor and each of its children keep a shared ``flock`` for as
long as they live: the kernel lets go of it when a process dies however it dies, and no pid can
be reused to fool the check. A starting supervisor removes every ``tg-*`` directory of its user
in the temporary directory whose lock it can take exclusively (and the shared-memory folder of
the same name): those of running hosts, and of a killed supervisor's children still draining,
stay locked; a directory without a ``lock`` file that says ``MARK`` is not ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from gateway.host.roles import private_dir, shared_memory_dir

log = logging.getLogger(__name__)

PREFIX = "tg-"
LOCK = "lock"
#: What the lock file says: a ``tg-*`` directory of another program is never taken for ours.
MARK = b"tensorgate host run directory\n"


def make_run_dir() -> tuple[Path, int]:
    """A new run directory (0700) and the descriptor of its lock, held until the process ends."""
    run_dir = Path(tempfile.mkdtemp(prefix=PREFIX))
    # Locked under another name, then renamed: a sweep never finds an unlocked ``lock`` of a live host.
    staging = run_dir / f"{LOCK}.new"
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    os.write(fd, MARK)
    staging.rename(run_dir / LOCK)
    return run_dir, fd


def hold_run_dir(run_dir: Path) -> None:
    """In a child: share the run directory's lock until this process ends (a sweep then keeps it)."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:  # the directory is already gone: the child fails on its sockets anyway
        log.warning("cannot hold the run directory %s: %s", run_dir, exc)
    # The descriptor stays open (and the lock held) for the life of the process.


def remove_run_dir(run_dir: Path) -> None:
    """Remove a run directory and its shared-memory folder (if it is this user's)."""
    shared = shared_memory_dir(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    if shared != run_dir and private_dir(shared):  # ours: tensors a killed process left
        shutil.rmtree(shared, ignore_errors=True)


def sweep_run_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the run directories of this user's hosts that are gone; the ones removed."""
    removed: list[Path] = []
    root = Path(tempfile.gettempdir()) if parent is None else parent
    try:
        candidates = list(root.glob(f"{PREFIX}*"))
    except OSError:
        return removed
    for run_dir in candidates:
        if _abandoned(run_dir):
            remove_run_dir(run_dir)
            removed.append(run_dir)
    if removed:
        log.info("supervisor: removed %d run directories of hosts that were killed", len(removed))
    return removed


def _abandoned(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a run directory of this user whose supervisor no longer holds its lock."""
    try:
        info = os.lstat(run_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False
        fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:  # not a directory of ours, or no lock file: not a run directory
        return False
    try:
        if os.read(fd, len(MARK) + 1) != MARK:  # another program's tg-* directory with a "lock" file
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its host, or a child of it, runs
        return False
    else:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)
