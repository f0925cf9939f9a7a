"""The process's lifecycle as the transport sees it: serving or draining, and the load it carries."""

from __future__ import annotations


class Lifecycle:
    """Whether a drain has begun, and how many inference requests are in flight.

    The signal handler calls ``begin_drain``; the transport reads ``draining`` (readiness
    fails, new inference requests get 503 with ``Connection: close``) and keeps ``inflight``
    under ``max_inflight`` (excess gets 503 at once, never a queue without bound).
    """

    __slots__ = ("draining", "inflight", "max_inflight")

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.draining = False

    def begin_drain(self) -> None:
        """Start draining (again is harmless)."""
        self.draining = True
