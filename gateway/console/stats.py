"""``GET /admin/stats``: the console's live figures per version, as JSON.

The figures are the ones ``/metrics`` exports, read from the same collector, so the page and
Prometheus never disagree. The page could parse the Prometheus text itself, but ``/metrics``
answers only on the inference port when ``admin_port`` is set, while the page lives with the
admin API; a small JSON read behind the token works wherever the console is served, and it
carries only what the page draws (about a tenth of the text's size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client.core import Metric

#: Families the console reads, without prometheus-client's ``_total`` suffix on counters.
_REQUESTS = "tensorgate_requests"
_LATENCY = "tensorgate_request_duration_seconds"
_BATCH = "tensorgate_batch_size"
_QUEUE = "tensorgate_queue_depth"
_DRIFT = "tensorgate_drift_psi"


def _version(versions: dict[tuple[str, str], dict[str, Any]], model: str, version: str) -> dict[str, Any]:
    key = (model, version)
    entry = versions.get(key)
    if entry is None:
        entry = versions[key] = {
            "model": model,
            "version": version,
            "requests": {},  # role -> {code: count}
            "latency": {"le": [], "cumulative": []},  # every role together
            "queue_depth": 0,
            "batch": {"count": 0, "sum": 0.0},
        }
    return entry


def _add_buckets(latency: dict[str, list[Any]], buckets: list[tuple[str, float]]) -> None:
    """Add one series' cumulative buckets to a version's (all series share the same bounds)."""
    if not latency["le"]:
        latency["le"] = [le for le, _ in buckets]
        latency["cumulative"] = [0] * len(buckets)
    if latency["le"] == [le for le, _ in buckets]:
        for index, (_, count) in enumerate(buckets):
            latency["cumulative"][index] += int(count)


def snapshot(families: Iterable[Metric], now: float) -> dict[str, Any]:
    """The console's figures from the collector's families, stamped with ``now`` (seconds)."""
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    drift: list[dict[str, Any]] = []
    for family in families:
        name = family.name
        if name == _REQUESTS:
            for sample in family.samples:
                labels = sample.labels
                entry = _version(versions, labels["model"], labels["version"])
                # str(): a role may be a str enum, which orjson refuses as a key.
                codes = entry["requests"].setdefault(str(labels["role"]), {})
                code = str(labels["code"])
                codes[code] = codes.get(code, 0) + int(sample.value)
        elif name == _LATENCY:
            series: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    labels = sample.labels
                    key = (labels["model"], labels["version"], labels["role"])
                    series.setdefault(key, []).append((labels["le"], sample.value))
            for (model, version, _role), buckets in series.items():
                _add_buckets(_version(versions, model, version)["latency"], buckets)
        elif name == _BATCH:
            for sample in family.samples:
                field = sample.name.rpartition("_")[2]
                if field in ("count", "sum"):
                    batch = _version(versions, sample.labels["model"], sample.labels["version"])["batch"]
                    batch[field] = int(sample.value) if field == "count" else sample.value
        elif name == _QUEUE:
            for sample in family.samples:
                entry = _version(versions, sample.labels["model"], sample.labels["version"])
                entry["queue_depth"] = int(sample.value)
        elif name == _DRIFT:
            for sample in family.samples:
                labels = sample.labels
                drift.append(
                    {"model": labels["model"], "version": labels["version"], "feature": labels["feature"],
                     "psi": sample.value}
                )  # fmt: skip
    ordered = sorted(versions.values(), key=lambda v: (v["model"], _number(v["version"])))
    return {"time": now, "versions": ordered, "drift": drift}


def _number(version: str) -> int:
    return int(version) if version.isdigit() else -1


class StatsReader(Protocol):
    """Takes a snapshot now, of the collector's families or of ``families`` (a whole host's, merged)."""

    def __call__(self, families: Iterable[Metric] | None = None) -> dict[str, Any]:
        """The console's figures."""
        ...


def stats_reader(collect: Callable[[], Iterable[Metric]], clock: Callable[[], float]) -> StatsReader:
    """A function that takes a snapshot now: ``collect`` is the collector's, ``clock`` wall time."""

    def read(families: Iterable[Metric] | None = None) -> dict[str, Any]:
        return snapshot(collect() if families is None else families, clock())

    return read
