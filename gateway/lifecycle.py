"""The process's lifecycle as the transport sees it: serving or draining, and the load it carries."""

from __future__ import annotations

#: Default for ``max_inflight_body_bytes``: four bodies at the default 64 MiB ``max_body_bytes``.
DEFAULT_INFLIGHT_BODY_BYTES = 256 * 1024 * 1024


class Lifecycle:
    """Whether a drain has begun, and how many inference requests (and body bytes) are in flight.

    The signal handler calls ``begin_drain``; the transport reads ``draining`` (readiness
    fails, new inference requests get 503 with ``Connection: close``) and keeps ``inflight``
    under ``max_inflight`` (excess gets 503 at once, never a queue without bound). Request
    bodies held in memory are counted in ``body_bytes`` and kept under ``max_body_bytes``
    (``take_body``/``release_body``): a count of requests alone lets 1,024 bodies of 64 MiB in.
    """

    __slots__ = ("body_bytes", "draining", "inflight", "max_body_bytes", "max_inflight")

    def __init__(self, max_inflight: int, max_body_bytes: int = DEFAULT_INFLIGHT_BODY_BYTES) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.draining = False
        self.max_body_bytes = max_body_bytes
        self.body_bytes = 0

    def begin_drain(self) -> None:
        """Start draining (again is harmless)."""
        self.draining = True

    def take_body(self, size: int) -> bool:
        """Count ``size`` more body bytes in memory; False (and nothing counted) past the budget."""
        held = self.body_bytes + size
        if held > self.max_body_bytes:
            return False
        self.body_bytes = held
        return True

    def release_body(self, size: int) -> None:
        """Forget ``size`` body bytes taken with ``take_body``."""
        self.body_bytes -= size
