"""The supervisor's children: the command that starts one, and what a child does first.

Every child runs ``python -m gateway serve`` with the supervisor's own arguments (so it loads
exactly the same settings) plus the variables of its ``HostRole``; ``serve`` sees the role and
becomes that worker or engine instead of a supervisor.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from gateway.host.roles import HostRole

#: The supervisor's pid: a child started after its supervisor died exits at once.
ENV_PARENT = "TENSORGATE_HOST_PARENT"
#: Linux prctl(2) option: a signal for this process when its parent dies.
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def child_command(argv: Sequence[str]) -> list[str]:
    """The command line of a child: this interpreter, ``-m gateway``, the supervisor's arguments."""
    return [sys.executable, "-m", "gateway", *argv]


def child_environ(role: HostRole, environ: Mapping[str, str], parent: int) -> dict[str, str]:
    """The environment of a child: the supervisor's, its role's variables and the supervisor's pid."""
    return {**environ, **role.environ(), ENV_PARENT: str(parent)}


def die_with_parent(environ: Mapping[str, str]) -> None:
    """In a child: be sent SIGTERM (drain, then exit) when the supervisor dies, even by SIGKILL.

    On Linux the kernel does it (``PR_SET_PDEATHSIG``); the check after it covers a supervisor
    that died before the call, whose child was already handed to another parent.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to ask: the supervisor's SIGTERM still reaches us
            log.warning("cannot ask to be stopped with the supervisor (prctl unavailable)")
    parent = environ.get(ENV_PARENT, "")
    if parent.isdigit() and os.getppid() != int(parent):
        log.error("the supervisor (pid %s) is gone: exiting", parent)
        sys.exit(1)


class ProcessField(logging.Filter):
    """Adds ``process`` (``worker-0``, ``engine-cpu``) and ``pid`` to every record a child logs."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self._fields = {"process": process, "pid": os.getpid()}

    def filter(self, record: logging.LogRecord) -> bool:
        """Merge the process's fields into the record's ``fields`` (the JSON formatter writes them)."""
        fields = getattr(record, "fields", None)
        record.fields = {**self._fields, **fields} if isinstance(fields, dict) else self._fields
        return True


def tag_logs(process: str) -> None:
    """Make every handler of the root logger tag its records with this child's process name."""
    tag = ProcessField(process)
    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
