"""The release state shared by a fleet of replicas (``state_store = "redis://..."``, docs/operations.md).

The release controller talks to the shared state through ``SharedState`` only (``fleet.Fleet``,
whose store is a ``backend.StateBackend``: Redis, or the supervisor's host store for the workers
of one host). One process without a ``state_store`` has none and saves to the local state
directory, as one replica always did; ``mode.open_state`` chooses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.release.history import HistoryEntry
from gateway.release.store import ModelRecord


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A model's state as the shared store holds it: its record (route and history) and load intents."""

    record: ModelRecord
    loaded: frozenset[int]


class SharedState(Protocol):
    """What the release controller asks of a fleet's shared store; each call raises StoreFailed when away."""

    replica: str

    async def fetch(self, name: str) -> StoredModel | None:
        """The model's state in the store (None: the fleet never changed it)."""

    async def commit(self, name: str, expected: int, record: ModelRecord, entry: HistoryEntry) -> None:
        """Save the change if the model's seq is still ``expected``; Conflict (409) if another won."""

    def applied(self, name: str) -> None:
        """This replica applied a change of ``name``: tell the fleet soon."""
