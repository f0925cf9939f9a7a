"""Where routes and their history survive restarts: one JSON document in the state directory.

Writes are atomic (a temporary file beside the target, fsync, rename, fsync of the directory),
so a crash leaves the old document or the new one, never half of one. Every model's record
carries its sequence number; a shared store for several replicas (a database, etcd, an object
store with conditional writes) can implement the same two calls and use that number for
compare-and-set, so two replicas never both apply change N+1 (docs/release-workflows.md).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routing.route import Route, RouteError

log = logging.getLogger(__name__)

STATE_FILE = "routes.json"
FORMAT = 1
#: History entries kept per model (the oldest are dropped first).
HISTORY_LIMIT = 1000


@dataclass
class ModelRecord:
    """A model's route and its audit trail."""

    route: Route
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seq(self) -> int:
        """The number of the latest change (0: none yet)."""
        return int(self.history[-1]["seq"]) if self.history else self.route.seq


class StateStore:
    """Routes and history in ``<state_dir>/routes.json``; calls block (run them in a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def load(self) -> dict[str, ModelRecord]:
        """Every saved model record; an unreadable file is set aside (and logged), not fatal."""
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            aside = self.path.with_suffix(".corrupt")
            log.error("cannot read %s (%s); moved it to %s and starting without saved routes", self.path, exc, aside)
            os.replace(self.path, aside)
            return {}
        records: dict[str, ModelRecord] = {}
        for name, entry in (doc.get("models") or {}).items():
            try:
                route = Route.from_json(entry["route"], int(entry["route"].get("seq", 0)))
            except (KeyError, TypeError, ValueError, RouteError) as exc:
                log.error("saved route of model %r is invalid (%s): ignored", name, exc)
                continue
            records[name] = ModelRecord(route, list(entry.get("history") or []))
        return records

    def save(self, records: Mapping[str, ModelRecord]) -> None:
        """Write every record atomically and durably."""
        doc = {
            "format": FORMAT,
            "models": {
                name: {"route": record.route.to_json(), "history": record.history[-HISTORY_LIMIT:]}
                for name, record in sorted(records.items())
            },
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".routes-", suffix=".json", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                json.dump(doc, stream, indent=1, sort_keys=True)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
