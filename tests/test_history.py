"""History entries are typed values whose JSON is exactly the plain documents written before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.release.history import HistoryEntry
from gateway.release.store import parse_record

#: As the previous version wrote one (fleet mode: details, then provenance, then replica).
SAVED: dict[str, Any] = {
    "seq": 7,
    "time": "2026-12-01T12:00:00+00:00",
    "actor": "mlflow-alias",
    "action": "swap",
    "reason": "alias champion moved",
    "before": {"weights": {"1": 100}, "seq": 6},
    "after": {"weights": {"2": 100}, "seq": 7},
    "alias": "champion",
    "alias_version": "2",
    "provenance": {
        "2": {"registered_model": "m", "model_version": "2", "run_id": "r", "git_commit": None, "source": None}
    },
    "replica": "a",
}


def test_an_entry_round_trips_to_the_same_json_in_the_same_order() -> None:
    entry = HistoryEntry.from_json(SAVED)
    assert (entry.seq, entry.actor, entry.replica) == (7, "mlflow-alias", "a")
    assert entry.details == {"alias": "champion", "alias_version": "2"}
    assert entry.changes_route
    assert orjson.dumps(entry.to_json()) == orjson.dumps(SAVED)  # byte for byte, so key order too


def test_a_single_replica_entry_has_no_provenance_or_replica_keys() -> None:
    doc = {k: v for k, v in SAVED.items() if k not in ("provenance", "replica", "alias", "alias_version")}
    assert list(HistoryEntry.from_json(doc).to_json()) == list(doc)


def test_a_saved_record_loads_typed_entries_and_refuses_bad_ones() -> None:
    record = parse_record({"route": SAVED["after"], "history": [SAVED]})
    assert record.seq == 7 and isinstance(record.history[0], HistoryEntry)
    for bad in ({**SAVED, "seq": "7"}, {k: v for k, v in SAVED.items() if k != "before"}, [SAVED]):
        with pytest.raises(TypeError):
            parse_record({"route": SAVED["after"], "history": [bad]})
