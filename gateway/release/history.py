"""A model's audit history: what each entry keeps of the versions it concerns."""

from __future__ import annotations

from typing import Any

from gateway.models import Model

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
