"""Where routes and their history survive restarts: one JSON document in the state directory.

Writes are atomic (a temporary file beside the target, fsync, rename, fsync of the directory),
so a crash leaves the old document or the new one, never half of one. Every model's record
carries its sequence number; in fleet mode (gateway/state) Redis holds the records and that
number is the compare-and-set, so two replicas never both apply change N+1, and this file is
each replica's local copy of the fleet's state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.release.history import HistoryEntry
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
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def seq(self) -> int:
        """The number of the latest change (0: none yet)."""
        return self.history[-1].seq if self.history else self.route.seq


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
            return self._set_aside(exc)
        # Valid JSON of the wrong shape (hand-edited, another program's file) is as unusable
        # as a torn one: set aside for a person to look at, never a start-up crash.
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, dict) or doc.get("format", FORMAT) != FORMAT:
            return self._set_aside(f"not a format-{FORMAT} routes document")
        records: dict[str, ModelRecord] = {}
        invalid = False
        for name, entry in models.items():
            try:
                records[name] = _record(entry)
            except (KeyError, TypeError, ValueError, AttributeError, RouteError) as exc:
                log.error("saved route of model %r is invalid (%s): ignored", name, exc)
                invalid = True
        if invalid:  # the next save drops the invalid entries: keep a copy of what they were
            aside = self.path.with_suffix(".corrupt")
            shutil.copyfile(self.path, aside)
            log.error("a copy of %s with the invalid entries is kept at %s", self.path, aside)
        return records

    def _set_aside(self, problem: object) -> dict[str, ModelRecord]:
        aside = self.path.with_suffix(".corrupt")
        log.error("cannot read %s (%s); moved it to %s and starting without saved routes", self.path, problem, aside)
        os.replace(self.path, aside)
        return {}

    def save(self, records: Mapping[str, ModelRecord]) -> None:
        """Write every record atomically and durably."""
        doc = {
            "format": FORMAT,
            "models": {
                name: {
                    "route": record.route.to_json(),
                    "history": [e.to_json() for e in record.history[-HISTORY_LIMIT:]],
                }
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


def parse_record(entry: Any) -> ModelRecord:
    """A saved record (``{"route": ..., "history": [...]}``); TypeError, KeyError, ValueError, RouteError if bad."""
    return _record(entry)


def _record(entry: Any) -> ModelRecord:
    """One model's saved record; TypeError (or KeyError, ValueError, RouteError) when misshapen."""
    if not isinstance(entry, dict) or not isinstance(entry["route"], dict):
        raise TypeError("an entry must be an object with a route object")
    history = entry.get("history") or []
    if not isinstance(history, list):
        raise TypeError("history must be a list of entries with a seq, a before and an after")
    entries = [HistoryEntry.from_json(e) for e in history]
    return ModelRecord(Route.from_json(entry["route"], int(entry["route"].get("seq", 0))), entries)


def write_atomic(directory: Path, name: str, data: bytes) -> None:
    """Write ``data`` to ``directory/name`` atomically and durably (temporary file, fsync, rename, fsync)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, directory / name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
