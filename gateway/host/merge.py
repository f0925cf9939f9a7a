"""The whole host's metrics and statistics, merged by the worker that is asked.

``HostView.metrics`` gathers the scraped worker's own families and every peer's (control
calls, gateway/host/control.py, all at once, each bounded by ``timeout_s``) and merges them
per family (``policy``, documented in docs/operations.md):

- counters and histograms: summed over processes (sample by sample, buckets included);
- gauges of an amount (in flight, queue depth and bytes): summed;
- gauges of a condition: ``max`` where any process is enough (draining, a circuit open, the
  drift PSI a worker measured on its share of the traffic), ``min`` where every process must
  agree (state store up, remote ready, drift reference loaded, shadow agreement);
- ``tensorgate_model_state``: READY only when every worker has the version READY, else 1 for
  each state some worker is in;
- the route weights: the scraped worker's own (the host has one route table);
- ``process_*`` (CPU, memory, file descriptors of each process), and any gauge not named here:
  one series per process, with a ``process`` label.

The ``tensorgate_*`` families thus keep the labels of a single process (PRODUCT.md section 5).

A peer that does not answer in time (dead, restarting, stalled) is skipped: its gauges are
missing from this answer, ``tensorgate_host_process_up{process}`` is 0 for it, and a warning
is logged when it goes missing. The scrape never waits longer than ``timeout_s``. The counts
of a process that is gone (killed and replaced, or stalled) come from the last snapshot it left
(gateway/host/control.py ``retired``, at most a second old), so the host's counters never fall.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import zmq.asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.core import CoreSlot
from gateway.host.control import (
    METRICS,
    RETIRED_FILE,
    STATS,
    ControlServer,
    FamilyRow,
    StatsSource,
    ask,
    family_rows,
    locked,
    read_snapshot,
    replace_file,
    retired,
    snapshot_dir,
    snapshot_pid,
    stats_rows,
)
from gateway.host.roles import HostRole, control_endpoint
from gateway.stats import VersionStats

log = logging.getLogger(__name__)

#: How long a scrape waits for the peers' answers, at most.
PEER_TIMEOUT_S = 0.5
#: Snapshots of dead processes kept as files before they are folded into one (``compact``).
COMPACT_AT = 8
#: The label that tells processes apart in the families merged per process.
PROCESS_LABEL = "process"


class Policy(enum.Enum):
    """How one family's samples from several processes become the host's."""

    SUM = "sum"
    MAX = "max"
    MIN = "min"
    LOCAL = "local"
    PROCESS = "process"
    #: ``min`` for the READY sample, ``max`` for the other states.
    STATE = "state"


#: Gauges whose merge is not the default (a gauge's default: one series per process).
GAUGES: dict[str, Policy] = {
    "tensorgate_inflight_requests": Policy.SUM,
    "tensorgate_inflight_body_bytes": Policy.SUM,
    "tensorgate_queue_depth": Policy.SUM,
    "tensorgate_predlog_queue_depth": Policy.SUM,
    "tensorgate_predlog_queue_bytes": Policy.SUM,
    "tensorgate_shadow_inflight_bytes": Policy.SUM,
    "tensorgate_draining": Policy.MAX,
    "tensorgate_remote_circuit_open": Policy.MAX,
    "tensorgate_state_store_up": Policy.MIN,
    "tensorgate_remote_ready": Policy.MIN,
    "tensorgate_drift_reference_loaded": Policy.MIN,
    "tensorgate_shadow_agreement_ratio": Policy.MIN,
    "tensorgate_drift_psi": Policy.MAX,
    "tensorgate_model_state": Policy.STATE,
    "tensorgate_route_weight": Policy.LOCAL,
    "python_info": Policy.LOCAL,  # the same interpreter in every process
}


def policy(name: str, kind: str) -> Policy:
    """The merge of family ``name`` of type ``kind`` (prometheus-client's family name and type)."""
    if name.startswith("process_"):
        return Policy.PROCESS  # CPU, memory, fds, start time: each process's own
    if kind in ("counter", "histogram", "gaugehistogram", "summary"):
        return Policy.SUM
    if kind == "info":
        return Policy.LOCAL
    return GAUGES.get(name, Policy.PROCESS)


def merge_families(snapshots: Iterable[tuple[str, list[FamilyRow]]]) -> list[Metric]:
    """Merge ``(process, family rows)`` snapshots, the scraped process's first, into the host's families."""
    order: list[str] = []
    parts: dict[str, list[tuple[str, FamilyRow]]] = {}
    for process, rows in snapshots:
        for row in rows:
            name = row[0]
            if name not in parts:
                order.append(name)
                parts[name] = []
            parts[name].append((process, row))
    return [_merge_one(parts[name]) for name in order]


def _merge_one(parts: list[tuple[str, FamilyRow]]) -> Metric:
    name, kind, documentation, unit, _ = parts[0][1]
    family = Metric(name, documentation, kind, unit)
    how = policy(name, kind)
    if how is Policy.LOCAL:
        for sample_name, labels, value in parts[0][1][4]:
            family.add_sample(sample_name, labels, value)
        return family
    if how is Policy.PROCESS:
        for process, row in parts:
            for sample_name, labels, value in row[4]:
                family.add_sample(sample_name, {**labels, PROCESS_LABEL: process}, value)
        return family
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}
    for _, row in parts:
        for sample_name, labels, value in row[4]:
            key = (sample_name, tuple(labels.items()))
            seen = merged.get(key)
            if seen is None:
                merged[key] = [sample_name, labels, value]
            elif how is Policy.SUM and not sample_name.endswith("_created"):
                seen[2] += value
            elif how is Policy.MAX or (how is Policy.STATE and labels.get("state") != "READY"):
                seen[2] = max(seen[2], value)
            else:  # MIN, and a counter's creation time: the earliest
                seen[2] = min(seen[2], value)
    for sample_name, labels, value in merged.values():
        family.add_sample(sample_name, labels, value)
    return family


def _add_duration(into: dict[str, int], other: dict[str, int]) -> None:
    into["count"] += other["count"]
    into["ns"] += other["ns"]


def merge_entry(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add one process's Triton statistics entry of a version to ``into`` (counts and times summed)."""
    into["inference_count"] += other["inference_count"]
    into["execution_count"] += other["execution_count"]
    into["last_inference"] = max(into["last_inference"], other["last_inference"])
    for key, duration in other["inference_stats"].items():
        _add_duration(into["inference_stats"][key], duration)
    sizes = {batch["batch_size"]: batch for batch in into["batch_stats"]}
    for batch in other["batch_stats"]:
        mine = sizes.get(batch["batch_size"])
        if mine is None:
            sizes[batch["batch_size"]] = batch
            continue
        for key in ("compute_input", "compute_infer", "compute_output"):
            _add_duration(mine[key], batch[key])
    into["batch_stats"] = [sizes[size] for size in sorted(sizes)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process now: not ours, but not provably gone either
    return True


def compact(snapshots: Path, at_least: int = COMPACT_AT) -> int:
    """Fold the snapshots of dead processes into one file (their counters and statistics summed); how many.

    Each replaced worker or engine leaves one snapshot for good; past ``at_least`` of them, they
    become one ``retired.json`` (under the directory's exclusive lock: a scrape reads either
    the files or their sum, never both or neither), so a child that keeps dying fills nothing.
    """
    if not snapshots.is_dir():
        return 0
    with locked(snapshots, exclusive=True):
        dead = [
            path
            for path in sorted(snapshots.glob("*.json"))
            if path.name != RETIRED_FILE and not _alive(snapshot_pid(path) or os.getpid())
        ]
        if len(dead) < at_least:
            return 0
        parts = [read_snapshot(path) for path in [snapshots / RETIRED_FILE, *dead]]
        found = [part for part in parts if part is not None]
        counters = [
            (str(index), [row for row in part["metrics"] if policy(row[0], row[1]) is Policy.SUM])
            for index, part in enumerate(found)
        ]
        entries: dict[tuple[str, str], dict[str, Any]] = {}
        for part in found:
            for model, version, entry in part["stats"]:
                mine = entries.get((model, version))
                if mine is None:
                    entries[(model, version)] = entry
                else:
                    merge_entry(mine, entry)
        folded = {
            "process": "retired",
            "pid": 0,
            "metrics": family_rows(merge_families(counters)),
            "stats": [[model, version, entry] for (model, version), entry in entries.items()],
        }
        replace_file(snapshots / RETIRED_FILE, orjson.dumps(folded))
        for path in dead:
            path.unlink(missing_ok=True)
    log.info("folded the metrics snapshots of %d processes gone into %s", len(dead), RETIRED_FILE)
    return len(dead)


class Families(CollectorRegistry):
    """Families already built (the host's merge), as a registry prometheus-client's encoders can write."""

    def __init__(self, families: list[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """The families, as given."""
        yield from self._families


def worker_stats(slot: CoreSlot) -> StatsSource:
    """A worker's statistics source: every version its model manager holds (none before start-up)."""

    def versions() -> Iterator[tuple[str, str, VersionStats]]:
        core = slot.current
        if core is None:
            return
        for model in core.manager.models():
            for number, mv in sorted(model.versions.items()):
                yield model.name, str(number), mv.stats

    return versions


class HostView:
    """A worker's part in the host's metrics: it answers its peers, and asks them for ``/metrics`` and stats.

    ``start`` binds its control socket (gateway/host/control.py) and ``close`` removes it; the
    app's lifespan owns both.
    """

    def __init__(
        self,
        role: HostRole,
        metrics: Callable[[], Iterable[Metric]],
        stats: StatsSource,
        *,
        timeout_s: float = PEER_TIMEOUT_S,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.role = role
        self._metrics = metrics
        self._stats = stats
        self.timeout_s = timeout_s
        self._context = context or zmq.asyncio.Context.instance()
        endpoint = control_endpoint(role.run_dir, role.process)
        self.snapshots = snapshot_dir(role.run_dir)
        self.control = ControlServer(
            role.process, endpoint, metrics, stats, snapshots=self.snapshots, context=self._context
        )
        #: Peers that answered the last call: a warning is logged when one of them goes missing
        #: (not for a peer still starting, which has never answered).
        self._answered: set[str] = set()

    async def start(self) -> None:
        """Answer the peers' control calls."""
        await self.control.start()

    async def close(self) -> None:
        """Stop answering (the peers then leave this process out)."""
        await self.control.close()

    def peers(self) -> list[str]:
        """Every other process of the host: the workers by number, the engines whose socket exists."""
        role = self.role
        names = [f"worker-{index}" for index in range(role.workers)]
        engines = role.run_dir.glob("control-engine-*.sock")
        names += sorted(path.name.removeprefix("control-").removesuffix(".sock") for path in engines)
        return [name for name in names if name != role.process]

    async def _ask(self, endpoint: str, call: bytes) -> dict[str, Any] | None:
        if not Path(endpoint.removeprefix("ipc://")).exists():
            return None  # not started yet, or stopped: no need to wait for it
        return await ask(self._context, endpoint, call, self.timeout_s)

    async def _retired(self, got: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The last snapshots of processes that did not answer now (dead or stalled): their counts stay in."""
        live = {int(answer["pid"]) for answer in got.values()} | {os.getpid()}

        def read() -> list[dict[str, Any]]:
            compact(self.snapshots)
            return retired(self.snapshots, live)

        return await asyncio.to_thread(read)

    async def _gather(self, call: bytes) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Every peer's answer to ``call`` by process, and the peers that gave none."""
        peers = self.peers()
        run_dir = self.role.run_dir
        answers = await asyncio.gather(*(self._ask(control_endpoint(run_dir, peer), call) for peer in peers))
        got = {peer: answer for peer, answer in zip(peers, answers, strict=True) if answer is not None}
        missing = [peer for peer in peers if peer not in got]
        for peer in missing:
            if peer in self._answered:
                log.warning("%s did not answer a control call within %.1f s: left out", peer, self.timeout_s)
        self._answered = set(got)
        return got, missing

    async def metrics(self) -> list[Metric]:
        """The host's families: this process's and every answering peer's, merged."""
        local = family_rows(self._metrics())
        got, missing = await self._gather(METRICS)
        snapshots = [(self.role.process, local)] + [(peer, answer["metrics"]) for peer, answer in got.items()]
        for old in await self._retired(got):  # only their counters: gauges are a live process's
            counts = [row for row in old["metrics"] if policy(row[0], row[1]) is Policy.SUM]
            snapshots.append((f"{old['process']}-{old['pid']}", counts))
        families = merge_families(snapshots)
        up = GaugeMetricFamily(
            "tensorgate_host_process_up",
            "1 for each process of the host that answered this scrape, 0 for one that did not (left out)",
            labels=[PROCESS_LABEL],
        )
        for process in sorted([self.role.process, *got, *missing]):
            up.add_metric([process], 0 if process in missing else 1)
        answered = GaugeMetricFamily(
            "tensorgate_host_answered_by", "The worker that answered this scrape (1)", labels=[PROCESS_LABEL]
        )
        answered.add_metric([self.role.process], 1)
        families += [up, answered]
        return families

    async def stats(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every version's statistics summed over the host's processes, by (model, version)."""
        entries: dict[tuple[str, str], dict[str, Any]] = {}
        for model, version, entry in stats_rows(self._stats):
            entries[(model, version)] = entry
        got, _ = await self._gather(STATS)
        for answer in [*got.values(), *await self._retired(got)]:
            for model, version, entry in answer["stats"]:
                mine = entries.get((model, version))
                if mine is None:
                    entries[(model, version)] = entry
                else:
                    merge_entry(mine, entry)
        return entries
