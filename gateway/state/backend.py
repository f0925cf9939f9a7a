"""What a fleet's shared store offers: Redis (``state_store = "redis://..."``) or a multi-worker host's store.

``Fleet`` (convergence, reports, ``?wait=all``) and the fleet's rollouts talk to a ``StateBackend``
only, so the same logic runs whether the replicas are pods sharing Redis or the workers of one
host sharing the supervisor's store (gateway/host/state_server.py). Every call raises one of
``STORE_ERRORS`` when the store is away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.release.history import HistoryEntry
from gateway.release.store import ModelRecord
from gateway.state import StoredModel

#: Store errors: Redis's own, and the OSError family a refused, reset or timed-out connection raises.
STORE_ERRORS = (RedisError, OSError, TimeoutError)


class StateBackend(Protocol):
    """A fleet's store: models' records with compare-and-set commits, change messages, expiring keys."""

    #: The store, as logs and ``GET /admin/models`` name it (no password).
    url: str

    def connect(self) -> StateBackend:
        """Another connection to the same store (the fleet's rollouts keep theirs; the caller closes it)."""

    async def close(self) -> None:
        """Close the connection."""

    async def seqs(self) -> dict[str, int]:
        """Every stored model's latest seq."""

    async def model(self, name: str) -> StoredModel | None:
        """The model's stored state; None when the fleet never changed it."""

    async def commit(
        self,
        name: str,
        expected: int,
        record: ModelRecord,
        entry: HistoryEntry,
        loaded: Iterable[int],
        *,
        seed: bool = False,
    ) -> int | None:
        """Write the change if the model's seq is still ``expected`` (None); else the seq the store holds.

        ``seed``: the store had no record of the model when this change began; keep the earlier history.
        """

    def changes(self) -> AsyncIterator[dict[str, Any] | None]:
        """Change messages (``{"model", "seq", "replica"}``); None each time it (re)subscribes."""

    async def report(self, replica: str, doc: dict[str, Any], ttl_s: float) -> None:
        """Publish a replica's report; it expires after ``ttl_s`` unless sent again."""

    async def replicas(self) -> list[dict[str, Any]]:
        """Every live replica's latest report, by replica id."""

    async def withdraw(self, replica: str) -> None:
        """Remove a replica's report (it stops)."""

    # -- plain keys (the fleet's rollouts: documents, leases, locks, published counters) ---------

    async def get(self, key: str) -> bytes | None:
        """The key's value (None: absent or expired)."""

    async def put(self, key: str, value: bytes, *, ttl_ms: int | None = None, only_new: bool = False) -> bool:
        """Set the key (expiring after ``ttl_ms``); with ``only_new``, only if absent: whether it was set."""

    async def delete(self, key: str, *, token: str | None = None) -> bool:
        """Delete the key (with ``token``: only while its value is ``token``); whether it was deleted."""

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        """Expire the key ``ttl_ms`` from now if its value is still ``token``; whether it was."""

    async def scan(self, prefix: str) -> dict[str, bytes]:
        """Every live key starting with ``prefix``, with its value."""

    async def add_member(self, key: str, member: str) -> None:
        """Add ``member`` to the set ``key``."""

    async def members(self, key: str) -> list[str]:
        """The members of the set ``key``, sorted."""


class StoreWriteFailed(OSError):
    """The store answered but could not save the change (its disk is full or read-only): nothing changed."""
