"""A background retry with exponential backoff, for a load that may succeed later (a remote model still loading).

Kubernetes starts the gateway and its Triton server together, and Triton (PyTriton above all)
may say it is ready before its models are: a start-up load that fails for that reason is tried
again, 0.5 s, 1 s, 2 s, ... apart up to a cap, until it succeeds, fails for good, or its version
is unloaded. An operator's load call meanwhile does not wait for the next pause: it makes the
next attempt now and gets its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: The first pause; each failure doubles it, up to the cap.
FIRST_PAUSE_S = 0.5


class RetryLoop:
    """Calls ``attempt`` until it returns True (done), pausing with jittered exponential backoff.

    The loop is a task owned by whoever starts it: ``close`` cancels it (an attempt under way is
    cancelled too) and ``on_done`` runs when it ends, however it ends.
    """

    def __init__(
        self,
        attempt: Callable[[], Awaitable[bool]],
        *,
        max_pause_s: float,
        rng: random.Random,
        name: str,
        on_done: Callable[[], None] | None = None,
        first_pause_s: float = FIRST_PAUSE_S,
    ) -> None:
        self._attempt = attempt
        self._max_pause_s = max_pause_s
        self._first_pause_s = min(first_pause_s, max_pause_s)
        self._rng = rng
        self._name = name
        self._on_done = on_done
        self._wake = asyncio.Event()
        #: Callers of ``now`` waiting for the end of the next attempt.
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        #: Attempts made so far.
        self.attempts = 0

    def start(self) -> None:
        """Begin: the first attempt comes after the first pause (the caller has just tried once)."""
        self._task = asyncio.create_task(self._run(), name=self._name)

    @property
    def running(self) -> bool:
        """Whether the loop is still trying."""
        return self._task is not None and not self._task.done()

    async def now(self) -> None:
        """Skip the current pause and wait until the next attempt has ended."""
        if not self.running:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await asyncio.shield(waiter)

    async def close(self) -> None:
        """Stop trying (cancelling an attempt under way) and wait for the loop to end."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        pause = self._first_pause_s
        try:
            while True:
                # Jitter: gateways started together must not call their Triton server in step.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause * self._rng.uniform(0.8, 1.2)):
                        await self._wake.wait()
                self._wake.clear()
                waiting, self._waiters = self._waiters, []
                self.attempts += 1
                try:
                    done = await self._attempt()
                except Exception:  # a bug in an attempt must not end the retries silently
                    log.exception("%s: attempt %d failed unexpectedly", self._name, self.attempts)
                    done = False
                finally:
                    _release(waiting)
                if done:
                    return
                pause = min(pause * 2, self._max_pause_s)
        finally:
            _release(self._waiters)
            self._waiters = []
            if self._on_done is not None:
                self._on_done()


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
