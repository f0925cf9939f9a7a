"""The listening sockets a supervisor binds once and every worker inherits.

One socket per port, shared by all workers (they accept from one queue), was chosen over one
``SO_REUSEPORT`` socket per worker: measured with loadtests/accept_balance.py (docs/operations.md,
"Workers"), and a connection waiting in the queue of a worker that dies is not lost, because
the supervisor keeps the socket open and the other workers (and the replacement) accept it.
"""

from __future__ import annotations

import socket

#: The accept queue: connections the kernel holds while every worker is busy or being replaced.
BACKLOG = 2048


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` that a child can inherit (``SO_REUSEADDR`` as uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def inherited_sockets(fds: tuple[int, ...]) -> list[socket.socket]:
    """The listening sockets a worker was handed, by file descriptor (main port first)."""
    return [socket.socket(fileno=fd) for fd in fds]
