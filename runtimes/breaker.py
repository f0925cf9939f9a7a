"""A circuit breaker: after N consecutive failures, fail fast; a half-open probe restores service.

    closed --N consecutive failures--> open --reset_s--> half-open --probe succeeds--> closed
                                        ^                    |
                                        +--probe fails-------+

While open, ``allow`` says no at once (the caller answers 503), so a dead remote costs its
clients nothing but a refusal and is spared a retry storm. Once ``reset_s`` has passed, one
call at a time is let through as the probe; everyone else is still refused until it ends.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of calls to one remote; ``failures = 0`` never opens."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float]) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = BreakerState.CLOSED
        #: How many times the breaker has opened (a metric, and a test's witness).
        self.opened = 0

    def allow(self) -> bool:
        """Whether a call may go to the remote now (True makes the caller the probe when half-open)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._reset_s:
                return False
            self.state = BreakerState.HALF_OPEN
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it is not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._reset_s - (self._clock() - self._opened_at))

    def succeeded(self) -> None:
        """A call got an answer from the remote: close the circuit."""
        self._consecutive = 0
        self._probing = False
        self.state = BreakerState.CLOSED

    def failed(self) -> None:
        """A call failed (refused, 5xx, timed out); opens the circuit at the threshold or on a failed probe."""
        self._consecutive += 1
        probe = self._probing
        self._probing = False
        if self._threshold and (probe or self._consecutive >= self._threshold) and self.state is not BreakerState.OPEN:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()
            self.opened += 1

    def abandoned(self) -> None:
        """A call ended with no verdict on the remote (cancelled): free the probe's place."""
        self._probing = False
