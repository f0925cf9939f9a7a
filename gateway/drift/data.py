"""Reading numbers for drift: a window of the prediction log, and reference data sets.

Both become :class:`Columns`: per tensor, a 2-D array of rows by features (the last axis of
the tensor), so feature ``features[3]`` is column 3 of the ``features`` input.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

_NUMERIC = (int, float)


class DriftDataError(ValueError):
    """A log or reference that cannot be read as the command asks; the message says why."""


@dataclass
class Columns:
    """Rows by features, per input and per output tensor."""

    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    records: int = 0


def log_files(log_dir: Path, model: str, version: str | None = None) -> list[Path]:
    """The model's log files (one version's, or all), oldest first within each version."""
    base = log_dir / model
    if not base.is_dir():
        raise DriftDataError(f"no prediction log for model {model!r} under {log_dir}")
    versions = [base / version] if version is not None else sorted(p for p in base.iterdir() if p.is_dir())
    files = [f for v in versions if v.is_dir() for f in sorted(v.iterdir()) if f.name.endswith((".jsonl", ".jsonl.gz"))]
    if not files:
        raise DriftDataError(f"no log files for model {model!r}" + (f" version {version}" if version else ""))
    return files


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.splitlines()


class _Collector:
    """Accumulates flat data per tensor, checking that each tensor keeps its last dimension."""

    def __init__(self) -> None:
        self.flat: dict[str, list[float]] = {}
        self.width: dict[str, int] = {}
        self.skipped: set[str] = set()

    def add(self, tensors: dict[str, Any]) -> None:
        for name, tensor in tensors.items():
            if name in self.skipped:
                continue
            data, shape = tensor.get("data"), tensor.get("shape")
            if not data or not shape or not isinstance(data[0], _NUMERIC) or tensor.get("hashed"):
                self.skipped.add(name)  # bytes, hashed or empty: nothing to measure
                continue
            width = shape[-1] if len(shape) > 1 else 1
            known = self.width.setdefault(name, width)
            if known != width:
                raise DriftDataError(f"tensor {name!r} changes its last dimension ({known} then {width})")
            self.flat.setdefault(name, []).extend(data)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name, flat in self.flat.items():
            values = np.array([np.nan if v is None else v for v in flat] if None in flat else flat, dtype=np.float64)
            out[name] = values.reshape(-1, self.width[name])
        return out


def read_log(
    files: Iterable[Path],
    *,
    since: str | None = None,
    until: str | None = None,
    roles: frozenset[str] = frozenset({"primary", "canary", "pinned"}),
    progress: Callable[[int, int, int], None] | None = None,
) -> Columns:
    """The answered requests (status 200) of the given roles within [since, until)."""
    files = list(files)
    total = sum(f.stat().st_size for f in files)
    done = 0
    inputs, outputs = _Collector(), _Collector()
    records = 0
    for path in files:
        for line in _lines(path):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line
            ts = record.get("ts", "")
            if (since is not None and ts < since) or (until is not None and ts >= until):
                continue
            if record.get("status") != 200 or record.get("role") not in roles:
                continue
            inputs.add(record.get("inputs") or {})
            outputs.add(record.get("outputs") or {})
            records += 1
        done += path.stat().st_size
        if progress is not None:
            progress(done, total, records)
    return Columns(inputs.arrays(), outputs.arrays(), records)


def read_reference(path: Path) -> Columns:
    """A reference data set: JSONL in the log's format (``inputs``, optionally ``outputs``), CSV or .npy.

    CSV and .npy hold rows of features of one input (its name comes from the log); a CSV
    header row, if any, is skipped.
    """
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz", ".json")):
            return _read_jsonl(path)
        if name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
            rows = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
            return Columns({"": rows.astype(np.float64)}, {}, len(rows))
        if name.endswith(".csv"):
            return Columns({"": _read_csv(path)}, {}, 0)
    except DriftDataError:
        raise
    except OSError as exc:
        raise DriftDataError(f"cannot read the reference {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise DriftDataError(f"the reference {path} could not be parsed: {exc}") from None
    raise DriftDataError(f"reference {path.name}: expected .jsonl, .csv or .npy")


def _read_jsonl(path: Path) -> Columns:
    """A JSONL reference; a line that is not a record is an error naming its number.

    Unlike the log reader, nothing is skipped silently: a reference that does not parse
    would otherwise compare a fraction of itself. Only a torn last line (no newline after it,
    as a copy of a log being written can end) is left out.
    """
    inputs, outputs = _Collector(), _Collector()
    records = 0
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    lines = data.splitlines()
    torn_last = not data.endswith(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            if record.get("status", 200) != 200:
                continue  # a failed request in a copy of the log: the log reader skips it too
            if not isinstance(record.get("inputs"), dict):
                raise ValueError("no 'inputs' object")
            tensors = [record["inputs"], record.get("outputs") or {}]
            if not all(isinstance(t, dict) for tensor in tensors for t in tensor.values()):
                raise ValueError("a tensor is not an object")
            inputs.add(record["inputs"])
            outputs.add(record.get("outputs") or {})
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            if number == len(lines) and torn_last:
                break
            reason = "not valid JSON" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
            raise DriftDataError(f"the reference {path} could not be parsed: line {number}: {reason}") from None
        records += 1
    if records == 0:
        raise DriftDataError(f"the reference {path} holds no records")
    return Columns(inputs.arrays(), outputs.arrays(), records)


def _read_csv(path: Path) -> np.ndarray:
    rows = list(csv.reader(io.StringIO(path.read_text("utf-8"))))
    first = 0
    if rows and rows[0] and not _is_number(rows[0][0]):
        first = 1  # a header
    parsed: list[list[float]] = []
    for number, row in enumerate(rows[first:], first + 1):
        if not row:
            continue
        try:
            values = [float(cell) for cell in row]
        except ValueError:
            raise DriftDataError(f"the reference {path} could not be parsed: line {number}: not numbers") from None
        if parsed and len(values) != len(parsed[0]):
            raise DriftDataError(
                f"the reference {path} could not be parsed: line {number}: {len(values)} columns, "
                f"line {first + 1} has {len(parsed[0])}"
            )
        parsed.append(values)
    if not parsed:
        raise DriftDataError(f"the reference {path} holds no rows")
    return np.array(parsed, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def progress_printer(stream: Any = sys.stderr, minimum_bytes: int = 16 << 20) -> Callable[[int, int, int], None]:
    """Prints "reading the log: 40% (400,000 records)" at each 10%, for logs of some size."""
    shown = [-1]

    def show(done: int, total: int, records: int) -> None:
        if total < minimum_bytes:
            return
        tenth = done * 10 // max(1, total)
        if tenth != shown[0]:
            shown[0] = tenth
            print(f"reading the log: {tenth * 10}% ({records:,} records)", file=stream, flush=True)

    return show
