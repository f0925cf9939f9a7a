"""The host's /metrics and statistics: every process's snapshot over its control socket, merged.

The first part runs the pieces in one process with real ZeroMQ sockets over IPC and the real
collector's output; the last part runs a real multi-process host (tests/host.py).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core import CoreSlot
from gateway.exchange import Exchange
from gateway.host.control import METRICS, ControlServer, ask, family_rows
from gateway.host.merge import Families, HostView, Policy, merge_entry, merge_families, policy
from gateway.host.roles import HostRole, control_endpoint
from gateway.lifecycle import Lifecycle
from gateway.stats import VersionStats
from gateway.telemetry.collector import GatewayCollector
from gateway.telemetry.engine import engine_control
from gateway.telemetry.requests import RequestMetrics

pytestmark = pytest.mark.anyio


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short private directory for IPC sockets (their paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Process:
    """One process's metrics as a worker has them: request counters, a lifecycle, the collector."""

    def __init__(self, name: str, run_dir: Path, workers: int) -> None:
        self.role = HostRole(name, run_dir, workers)
        self.requests = RequestMetrics()
        self.lifecycle = Lifecycle(64)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(self.requests, self.lifecycle, CoreSlot()))
        ProcessCollector(registry=self.registry)
        self.stats: dict[tuple[str, str], VersionStats] = {}
        self.view = HostView(self.role, self.registry.collect, self._stats, timeout_s=0.5)

    def _stats(self) -> Iterator[tuple[str, str, VersionStats]]:
        for (model, version), stats in self.stats.items():
            yield model, version, stats

    def serve(self, n: int, status: int = 200, model: str = "m", version: str = "1") -> None:
        """Count ``n`` answered requests."""
        for _ in range(n):
            exchange = Exchange("id")
            exchange.model, exchange.version, exchange.role, exchange.status = model, version, "primary", status
            self.requests.record(exchange, 0.001)


def samples(families: list[Metric], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A family's samples named ``name`` by their sorted labels, from the merged families' text."""
    text = generate_latest(Families(families)).decode()
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_policies_per_family() -> None:
    """Counters and histograms sum; amounts sum; conditions take min or max; readings stay per process."""
    assert policy("tensorgate_requests", "counter") is Policy.SUM
    assert policy("tensorgate_request_duration_seconds", "histogram") is Policy.SUM
    assert policy("tensorgate_inflight_requests", "gauge") is Policy.SUM
    assert policy("tensorgate_queue_depth", "gauge") is Policy.SUM
    assert policy("tensorgate_state_store_up", "gauge") is Policy.MIN
    assert policy("tensorgate_draining", "gauge") is Policy.MAX
    assert policy("tensorgate_route_weight", "gauge") is Policy.LOCAL
    assert policy("tensorgate_model_state", "gauge") is Policy.PROCESS
    assert policy("process_cpu_seconds", "counter") is Policy.PROCESS
    assert policy("tensorgate_some_future_gauge", "gauge") is Policy.PROCESS


def test_merge_of_real_collector_output(run_dir: Path) -> None:
    """Two workers' GatewayCollector families: requests and latency summed, gauges merged by policy."""
    a, b = Process("worker-0", run_dir, 2), Process("worker-1", run_dir, 2)
    a.serve(3)
    a.serve(1, status=404, model="", version="")
    b.serve(4)
    a.lifecycle.inflight, b.lifecycle.inflight = 2, 5
    b.lifecycle.draining = True
    merged = merge_families(
        [("worker-0", family_rows(a.registry.collect())), ("worker-1", family_rows(b.registry.collect()))]
    )
    requests = samples(merged, "tensorgate_requests_total")
    ok = (("code", "200"), ("model", "m"), ("role", "primary"), ("version", "1"))
    assert requests[ok] == 7
    assert sum(requests.values()) == 8
    count = samples(merged, "tensorgate_request_duration_seconds_count")
    assert count[(("model", "m"), ("role", "primary"), ("version", "1"))] == 7
    buckets = samples(merged, "tensorgate_request_duration_seconds_bucket")
    assert buckets[(("le", "+Inf"), ("model", "m"), ("role", "primary"), ("version", "1"))] == 7
    assert samples(merged, "tensorgate_inflight_requests") == {(): 7}
    assert samples(merged, "tensorgate_draining") == {(): 1}
    assert samples(merged, "tensorgate_state_store_up") == {(): 1}
    rss = samples(merged, "process_resident_memory_bytes")
    assert {dict(key)["process"] for key in rss} == {"worker-0", "worker-1"}


def test_merge_of_statistics_entries() -> None:
    """Inference counts, executions, durations and batch sizes add up; the last inference is the latest."""
    worker, engine = VersionStats(), VersionStats()
    worker.request_done(True, 3, 0, 1000)
    worker.unbatched(0, 500)
    engine.execution_done(3, 10, 20, 30)
    engine.execution_done(8, 10, 20, 30)
    engine.queued(40)
    entry = worker.to_triton("m", "1")
    merge_entry(entry, engine.to_triton("m", "1"))
    assert entry["inference_count"] == 4  # 3 rows batched + 1 unbatched
    assert entry["execution_count"] == 3  # 2 batches in the engine + 1 unbatched call
    assert entry["inference_stats"]["success"] == {"count": 2, "ns": 1500}
    assert entry["inference_stats"]["queue"] == {"count": 2, "ns": 40}
    assert [b["batch_size"] for b in entry["batch_stats"]] == [1, 3, 8]
    assert entry["last_inference"] == worker.last_inference_ms


async def test_host_view_sums_peers_over_ipc(run_dir: Path) -> None:
    """Each worker's /metrics families include every peer's counts; both workers give the same sums."""
    a, b = Process("worker-0", run_dir, 2), Process("worker-1", run_dir, 2)
    a.serve(5)
    b.serve(6)
    a.stats[("m", "1")] = VersionStats()
    a.stats[("m", "1")].request_done(True, 5, 0, 10)
    b.stats[("m", "1")] = VersionStats()
    b.stats[("m", "1")].request_done(True, 6, 0, 10)
    await a.view.start()
    await b.view.start()
    try:
        ok = (("code", "200"), ("model", "m"), ("role", "primary"), ("version", "1"))
        for view in (a.view, b.view):
            families = await view.metrics()
            assert samples(families, "tensorgate_requests_total")[ok] == 11
            up = samples(families, "tensorgate_host_process_up")
            assert up == {(("process", "worker-0"),): 1, (("process", "worker-1"),): 1}
            stats = await view.stats()
            assert stats[("m", "1")]["inference_count"] == 11
            assert stats[("m", "1")]["inference_stats"]["success"]["count"] == 2
    finally:
        await a.view.close()
        await b.view.close()
    assert not (run_dir / "control-worker-0.sock").exists()


async def test_engine_counts_join_the_host(run_dir: Path) -> None:
    """An engine's control socket is found in the run dir; its batch-level counts join the workers'."""
    worker = Process("worker-0", run_dir, 1)
    worker.stats[("m", "1")] = VersionStats()
    worker.stats[("m", "1")].request_done(True, 4, 0, 10)
    engine_stats = VersionStats()
    engine_stats.execution_done(4, 1, 2, 3, requests=2)
    engine_stats.queued(7)
    role = HostRole("engine-cpu", run_dir, 1)
    engine = engine_control(role, lambda: {("m", "1"): engine_stats}, lambda: {("m", "1"): 3})
    await engine.start()
    await worker.view.start()
    try:
        assert worker.view.peers() == ["engine-cpu"]
        stats = (await worker.view.stats())[("m", "1")]
        assert (stats["inference_count"], stats["execution_count"]) == (4, 1)
        families = await worker.view.metrics()
        key = (("model", "m"), ("version", "1"))
        assert samples(families, "tensorgate_batch_size_count")[key] == 1
        assert samples(families, "tensorgate_queue_depth")[key] == 3
        assert (("process", "engine-cpu"),) in samples(families, "tensorgate_host_process_up")
    finally:
        await worker.view.close()
        await engine.close()


async def test_dead_or_stalled_peer_is_left_out_within_the_timeout(run_dir: Path) -> None:
    """A peer that never started, and one that takes calls but never answers, cost one timeout, not a hang."""
    worker = Process("worker-0", run_dir, 3)
    worker.serve(2)
    context = zmq.asyncio.Context.instance()
    stalled = context.socket(zmq.ROUTER)  # worker-1: bound, never answers
    stalled.bind(control_endpoint(run_dir, "worker-1"))
    (run_dir / "control-worker-2.sock").touch()  # worker-2: a file a killed process left behind
    try:
        started = time.monotonic()
        families = await worker.view.metrics()
        elapsed = time.monotonic() - started
        assert elapsed < 5.0  # 0.5 s timeout; generous for a loaded CI machine
        up = samples(families, "tensorgate_host_process_up")
        assert up[(("process", "worker-0"),)] == 1
        assert up[(("process", "worker-1"),)] == 0
        assert up[(("process", "worker-2"),)] == 0
        ok = (("code", "200"), ("model", "m"), ("role", "primary"), ("version", "1"))
        assert samples(families, "tensorgate_requests_total")[ok] == 2
        assert await worker.view.stats() == {}
    finally:
        stalled.close(linger=0)


async def test_control_server_answers_errors_and_survives(run_dir: Path) -> None:
    """An unknown call and a failing snapshot answer an error (the caller leaves the peer out); the socket lives on."""
    calls = {"n": 0}

    def metrics() -> list[Metric]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("collector broke")
        return []

    endpoint = control_endpoint(run_dir, "worker-1")
    server = ControlServer("worker-1", endpoint, metrics, lambda: iter(()))
    await server.start()
    context = zmq.asyncio.Context.instance()
    try:
        assert await ask(context, endpoint, METRICS, 2.0) is None
        assert await ask(context, endpoint, b"nonsense", 2.0) is None
        reply = await ask(context, endpoint, METRICS, 2.0)
        assert reply is not None and reply["metrics"] == [] and reply["process"] == "worker-1"
    finally:
        await server.close()
