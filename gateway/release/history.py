"""A model's audit history: one typed entry per change, and what it keeps of the versions it concerns.

An entry's JSON (the admin API's ``/history``, ``routes.json``, the fleet's Redis list) is the
seven named fields, then its details (``version``, ``alias``, ``rollout``, figures...) in the
order they were given, then ``provenance`` and ``replica`` when set: the same document the
controller wrote as a plain dict before, so files and Redis contents written then still load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.models import Model

#: The fields every entry has, in their JSON order.
_NAMED = ("seq", "time", "actor", "action", "reason", "before", "after")


@dataclass(slots=True)
class HistoryEntry:
    """One change (or audit note) of a model: who did what, why, and the route before and after."""

    seq: int
    time: str
    actor: str
    action: str
    reason: str | None
    before: dict[str, Any] | None  # the route's JSON (None: the model had no route)
    after: dict[str, Any] | None
    details: dict[str, Any] = field(default_factory=dict)  # the action's own keys (version, alias, rollout...)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> where it came from
    replica: str | None = None  # in a fleet: the replica that made the change

    @property
    def changes_route(self) -> bool:
        """Whether the route after differs from the route before."""
        return self.before != self.after

    def to_json(self) -> dict[str, Any]:
        """The entry as it is saved and shown (the same keys, in the same order, as ever)."""
        doc: dict[str, Any] = {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "reason": self.reason,
            "before": self.before,
            "after": self.after,
        }
        doc.update(self.details)
        if self.provenance:
            doc["provenance"] = self.provenance
        if self.replica is not None:
            doc["replica"] = self.replica
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> HistoryEntry:
        """A saved entry; TypeError unless it has an integer seq and routes (or null) before and after."""
        if not (
            isinstance(doc, dict)
            and isinstance(doc.get("seq"), int)
            and all(key in doc and isinstance(doc[key], dict | None) for key in ("before", "after"))
        ):
            raise TypeError("history must be a list of entries with a seq, a before and an after")
        replica = doc.get("replica")
        return cls(
            seq=doc["seq"],
            time=str(doc.get("time", "")),
            actor=str(doc.get("actor", "")),
            action=str(doc.get("action", "")),
            reason=doc.get("reason"),
            before=doc["before"],
            after=doc["after"],
            details={k: v for k, v in doc.items() if k not in _NAMED and k not in ("provenance", "replica")},
            provenance=doc.get("provenance") or {},
            replica=None if replica is None else str(replica),
        )


#: What the audit history keeps of each version's provenance (the metadata has all of it).
_AUDIT_FIELDS = ("registered_model", "model_version", "run_id", "git_commit", "source")


def provenance_of(model: Model, versions: set[int]) -> dict[str, dict[str, Any]]:
    """Version -> where it came from, for the versions a history entry concerns."""
    found = {}
    for version in sorted(versions):
        mv = model.versions.get(version)
        if mv is not None and mv.provenance:
            found[str(version)] = {key: mv.provenance.get(key) for key in _AUDIT_FIELDS}
    return found


def unloaded_versions(history: Iterable[HistoryEntry], since: int = 0) -> set[int]:
    """The versions the changes after ``since`` unloaded and no later change brought back.

    Brought back: loaded again, or named by a later route (a swap or rollback loads what it
    routes to without a load entry of its own).
    """
    unloaded: set[int] = set()
    for entry in history:
        if entry.seq <= since:
            continue
        if entry.after:
            named = {**(entry.after.get("weights") or {}), **(entry.after.get("shadow") or {})}
            unloaded -= {int(v) for v in named if str(v).isdigit()}
        version = str(entry.details.get("version", ""))
        if entry.action == "unload" and version.isdigit():
            unloaded.add(int(version))
        elif entry.action == "load" and version.isdigit():
            unloaded.discard(int(version))
    return unloaded
