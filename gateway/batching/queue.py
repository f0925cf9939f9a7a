"""The batcher's queue: pending requests by priority, FIFO within a priority level."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gateway.batching.clock import Timer


class ClientWatch(Protocol):
    """The client of a request, as far as the transport can tell whether it is still there."""

    def gone(self) -> bool | None:
        """True or False where the transport can tell at once; None where only waiting tells."""
        ...

    async def wait_gone(self) -> None:
        """Return once the client has gone."""
        ...


@dataclass(eq=False, slots=True)
class PendingRequest:
    """One request waiting for (or riding in) a batch."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    #: Requests merge only when their keys are equal: same inputs, same non-batch dims and dtypes.
    key: Hashable
    #: 1 is the highest priority.
    priority: int
    enqueued: float
    deadline: float | None
    future: asyncio.Future[list[np.ndarray]]
    #: True while the request is waiting in the queue.
    queued: bool = True
    #: True once nobody awaits the answer any more (cancelled, disconnected, timed out).
    abandoned: bool = False
    #: The client, to ask whether it has gone.
    client: ClientWatch | None = None
    timer: Timer | None = field(default=None, repr=False)


class RequestQueue:
    """Pending requests in ``levels`` priority levels; ``size`` counts those still waiting."""

    def __init__(self, levels: int) -> None:
        self._levels: list[deque[PendingRequest]] = [deque() for _ in range(levels)]
        self.size = 0

    def push(self, request: PendingRequest) -> None:
        """Append at the back of its priority level."""
        self._levels[request.priority - 1].append(request)
        self.size += 1

    def discard(self, request: PendingRequest) -> bool:
        """Stop ``request`` waiting (its deque entry is dropped lazily); False if it was not."""
        if not request.queued:
            return False
        request.queued = False
        self.size -= 1
        return True

    def head(self) -> PendingRequest | None:
        """The oldest waiting request of the highest non-empty priority level."""
        for level in self._levels:
            while level and not level[0].queued:
                level.popleft()
            if level:
                return level[0]
        return None

    def rows_ready(self, key: Hashable, max_rows: int) -> int:
        """Rows of waiting requests with ``key`` that fit one batch of ``max_rows``, in order."""
        rows = 0
        for level in self._levels:
            for request in level:
                if request.queued and request.key == key and rows + request.rows <= max_rows:
                    rows += request.rows
                    if rows == max_rows:
                        return rows
        return rows

    def take(self, key: Hashable, max_rows: int) -> list[PendingRequest]:
        """Remove and return waiting requests with ``key``, by priority then age, up to ``max_rows``."""
        batch: list[PendingRequest] = []
        rows = 0
        for index, level in enumerate(self._levels):
            if not level:
                continue
            kept: deque[PendingRequest] = deque()
            for request in level:
                if not request.queued:
                    continue
                if request.key == key and rows + request.rows <= max_rows:
                    request.queued = False
                    self.size -= 1
                    rows += request.rows
                    batch.append(request)
                else:
                    kept.append(request)
            self._levels[index] = kept
        return batch

    def waiting(self) -> list[PendingRequest]:
        """The requests still waiting, in no particular order."""
        return [r for level in self._levels for r in level if r.queued]

    def drain(self) -> list[PendingRequest]:
        """Remove and return every waiting request."""
        waiting = [r for level in self._levels for r in level if r.queued]
        for request in waiting:
            request.queued = False
        for level in self._levels:
            level.clear()
        self.size = 0
        return waiting
