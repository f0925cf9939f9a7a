"""The batcher's clock: what time it is and timers on that same time, injectable for tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback that can be cancelled (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Do not run the callback (no effect once it ran)."""
        ...


class Clock(Protocol):
    """Monotonic seconds, and callbacks due after a delay on those same seconds."""

    def now(self) -> float:
        """The current time in seconds (monotonic)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the event loop once ``delay_s`` has passed on this clock."""
        ...


class LoopClock:
    """The real clock: ``time.monotonic`` and the running event loop's timers (also monotonic)."""

    __slots__ = ()

    #: ``time.monotonic`` itself: the batcher reads the clock several times a batch.
    now = staticmethod(time.monotonic)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """``loop.call_later``."""
        return asyncio.get_running_loop().call_later(delay_s, callback)


class _FakeTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that only moves when told to: ``advance`` runs the timers that come due, in order.

    For tests: delays and deadlines are checked without sleeping, so they hold on a loaded
    machine and take no time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The fake time."""
        return self._now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Schedule ``callback`` at now + ``delay_s`` fake seconds."""
        timer = _FakeTimer(callback)
        heapq.heappush(self._timers, (self._now + max(0.0, delay_s), next(self._order), timer))
        return timer

    def pending(self) -> int:
        """Timers scheduled and not cancelled or run."""
        return sum(not t.cancelled for _, _, t in self._timers)

    def advance(self, seconds: float) -> None:
        """Move time forward, running each timer due by then (at its own time, in order)."""
        until = self._now + seconds
        while self._timers and self._timers[0][0] <= until:
            due, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()
        self._now = max(self._now, until)
