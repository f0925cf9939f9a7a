"""The host's /metrics and statistics: every process's snapshot over its control socket, merged.

The first part runs the pieces in one process with real ZeroMQ sockets over IPC and the real
collector's output; the last part runs a real multi-process host (tests/host.py).
"""

from __future__ import annotations

import gzip
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import tritonclient.grpc as grpcclient
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core import CoreSlot
from gateway.exchange import Exchange
from gateway.host.control import METRICS, ControlServer, ask, family_rows, replace_file, retired, snapshot_dir
from gateway.host.merge import COMPACT_AT, Families, HostView, Policy, compact, merge_entry, merge_families, policy
from gateway.host.roles import ENV_DIR, HostRole, control_endpoint
from gateway.lifecycle import Lifecycle
from gateway.stats import VersionStats
from gateway.telemetry.collector import GatewayCollector
from gateway.telemetry.engine import engine_control
from gateway.telemetry.requests import RequestMetrics
from tests.host import Host, serve_host
from tests.onnx_models import add_sub, write_model
from tests.rawhttp import request
from tests.server import AUTH, free_port

pytestmark = pytest.mark.anyio


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


OK = (("code", "200"), ("model", "m"), ("role", "primary"), ("version", "1"))


def flatten(rows: list[Any]) -> Iterator[tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
    """Snapshot rows as (sample name, {labels: value}), the shape ``scrape`` gives."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for _, _, _, _, sample_rows in rows:
        for name, labels, value in sample_rows:
            found.setdefault(name, {})[tuple(sorted(labels.items()))] = value
    yield from found.items()


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
    assert policy("tensorgate_model_state", "gauge") is Policy.STATE
    assert policy("tensorgate_drift_psi", "gauge") is Policy.MAX
    assert policy("tensorgate_shadow_agreement_ratio", "gauge") is Policy.MIN
    assert policy("process_cpu_seconds", "counter") is Policy.PROCESS
    assert policy("tensorgate_some_future_gauge", "gauge") is Policy.PROCESS
    assert policy("python_info", "gauge") is Policy.LOCAL


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


def state_rows(current: str) -> list[Any]:
    """One worker's ``tensorgate_model_state`` for version 1 of ``m``, in state ``current``."""
    family = GaugeMetricFamily("tensorgate_model_state", "", labels=["model", "version", "state"])
    for state in ("LOADING", "READY", "UNLOADING", "FAILED"):
        family.add_metric(["m", "1", state], 1 if state == current else 0)
    return family_rows([family])


def test_model_state_is_ready_when_every_worker_is() -> None:
    """READY only when every worker has the version READY; else each state some worker is in."""
    both = merge_families([("worker-0", state_rows("READY")), ("worker-1", state_rows("READY"))])
    assert samples(both, "tensorgate_model_state")[(("model", "m"), ("state", "READY"), ("version", "1"))] == 1
    one = merge_families([("worker-0", state_rows("READY")), ("worker-1", state_rows("LOADING"))])
    states = {dict(k)["state"]: v for k, v in samples(one, "tensorgate_model_state").items()}
    assert states == {"LOADING": 1, "READY": 0, "UNLOADING": 0, "FAILED": 0}


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


# -- a real host: supervisor, engine and two workers (tests/host.py) ---------------------------

JSON = {"Content-Type": "application/json"}
ADD_SUB = orjson.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
)
#: Batched in the engine (its batch-level counts come from there), and one run inside each worker.
BATCHED = 'max_batch_size = 8\nplacement = "engine"\n[batching]\nmax_queue_delay_ms = 1\n'
IN_WORKER = 'placement = "worker"\n'


def scrape(port: int) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    """One /metrics answer on a fresh connection: which worker answered, and every sample by name and labels."""
    text = request(port, "GET", "/metrics", timeout_s=30).body.decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    (answered,) = found["tensorgate_host_answered_by"]
    return dict(answered)["process"], found


def eventually(check: Callable[[], None], timeout_s: float = 30.0) -> None:
    """Run ``check`` until it passes: a peer too slow for the scrape's 0.5 s on a loaded machine
    is counted from its last snapshot (up to a second old), and the next call asks it again."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> Any:
    """A GET's JSON body (200 expected)."""
    reply = request(port, "GET", path, headers=headers, timeout_s=30)
    assert reply.status == 200, reply.body
    return reply.json()


def served(found: dict[str, dict[tuple[tuple[str, str], ...], float]], model: str) -> float:
    """Requests answered 200 for ``model``, summed over versions and roles."""
    return sum(
        value
        for labels, value in found.get("tensorgate_requests_total", {}).items()
        if dict(labels).get("model") == model and dict(labels).get("code") == "200"
    )


def records_by_pid(log_dir: Path) -> dict[int, int]:
    """Prediction-log records per writing process (every file's name carries its writer's pid)."""
    counts: dict[int, int] = {}
    for path in log_dir.rglob("*.jsonl*"):
        pid = int(path.name.split("-")[-2])
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        complete = [line for line in data.splitlines() if line.endswith(b"}")]
        counts[pid] = counts.get(pid, 0) + len(complete)
    return counts


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """``simple`` (add_sub, batched in the engine) and ``local`` (add_sub, run inside each worker)."""
    root = tmp_path / "models"
    write_model(root, "simple", 1, add_sub(), config=BATCHED)
    write_model(root, "local", 1, add_sub(), config=IN_WORKER)
    return root


def infer_until_both_workers_served(host: Host, model: str, at_least: int) -> int:
    """Send requests (fresh connections, a few at a time) until every worker served some; how many were sent."""
    sent = 0
    deadline = time.monotonic() + 120
    workers = set(host.pids("worker").values())
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            statuses = list(
                pool.map(
                    lambda _: request(host.port, "POST", f"/v2/models/{model}/infer", ADD_SUB, JSON).status, range(8)
                )
            )
            assert statuses == [200] * 8
            sent += 8
            if sent >= at_least and workers <= set(records_by_pid(host.log_dir)):
                return sent
            time.sleep(0.01)
    raise AssertionError(f"requests never reached every worker: {records_by_pid(host.log_dir)}")


def test_a_host_answers_for_all_its_processes(repository: Path) -> None:
    """N=2 workers: /metrics, the statistics extension and the prediction log add up to K, from either worker."""
    with serve_host(repository, workers=2, predlog_flush_interval_s=0.01) as host:
        k_engine = infer_until_both_workers_served(host, "simple", 40)
        k_local = infer_until_both_workers_served(host, "local", 16)
        workers = host.pids("worker")
        # Prediction log: one file set per worker, each worker's records its own; together exactly K.
        host.wait_until(lambda: sum(records_by_pid(host.log_dir).values()) == k_engine + k_local, "all records")
        by_pid = records_by_pid(host.log_dir)
        assert set(by_pid) == set(workers.values()) and all(by_pid.values())

        everyone = {(("process", p),): 1.0 for p in ("engine-cpu", "worker-0", "worker-1")}
        answers: dict[str, dict[str, dict[tuple[tuple[str, str], ...], float]]] = {}
        deadline = time.monotonic() + 60
        while len(answers) < 2 and time.monotonic() < deadline:
            answered, found = scrape(host.port)
            if found["tensorgate_host_process_up"] == everyone:  # a peer too slow on a loaded machine: again
                answers[answered] = found
        assert set(answers) == {"worker-0", "worker-1"}, "both workers answered /metrics"
        for found in answers.values():
            assert served(found, "simple") == k_engine
            assert served(found, "local") == k_local
            records = found["tensorgate_predlog_records_total"]
            assert records[(("model", "simple"),)] == k_engine and records[(("model", "local"),)] == k_local
            key = (("model", "simple"), ("version", "1"))
            # Batches formed in the engine: its batch-level histogram counts every request's rows once.
            assert found["tensorgate_batch_size_sum"][key] == k_engine
            assert found["tensorgate_inflight_requests"][()] >= 0
            state = found["tensorgate_model_state"]  # the labels of one process: no process label
            assert state[(("model", "simple"), ("state", "READY"), ("version", "1"))] == 1
            assert state[(("model", "simple"), ("state", "LOADING"), ("version", "1"))] == 0

        # The console's figures (GET /admin/stats) are the host's too.
        def console() -> None:
            figures = get_json(host.port, "/admin/stats", AUTH)
            versions = {(v["model"], v["version"]): v for v in figures["versions"]}
            assert sum(versions[("local", "1")]["requests"]["primary"].values()) == k_local
            assert versions[("simple", "1")]["batch"]["sum"] == k_engine

        # The statistics extension: the workers' inference counts and the engine's executions, summed.
        def statistics() -> None:
            (simple,) = get_json(host.port, "/v2/models/simple/stats")["model_stats"]
            assert simple["inference_count"] == k_engine
            assert simple["inference_stats"]["success"]["count"] == k_engine
            assert 0 < simple["execution_count"] <= k_engine
            assert (
                sum(batch["batch_size"] * batch["compute_infer"]["count"] for batch in simple["batch_stats"])
                == k_engine
            )
            (local,) = get_json(host.port, "/v2/models/local/versions/1/stats")["model_stats"]
            assert local["inference_count"] == local["execution_count"] == k_local

        for _ in range(4):  # on fresh connections: either worker answers
            eventually(console)
            eventually(statistics)


def test_a_stalled_worker_does_not_hang_the_scrape(repository: Path) -> None:
    """SIGSTOP one worker: the other answers /metrics within the peer timeout, the stalled one left out."""
    with serve_host(repository, workers=2) as host:
        infer_until_both_workers_served(host, "local", 8)
        workers = host.pids("worker")
        os.kill(workers["worker-1"], signal.SIGSTOP)
        try:
            for _ in range(3):  # the shared listening socket: only the running worker accepts now
                started = time.monotonic()
                answered, found = scrape(host.port)
                assert time.monotonic() - started < 10.0  # the 0.5 s timeout, on a loaded 2-core machine
                assert answered == "worker-0"
                assert found["tensorgate_host_process_up"][(("process", "worker-1"),)] == 0
                assert found["tensorgate_host_process_up"][(("process", "engine-cpu"),)] == 1
                stats = get_json(host.port, "/v2/models/stats")["model_stats"]
                assert {entry["name"] for entry in stats} == {"simple", "local"}
        finally:
            os.kill(workers["worker-1"], signal.SIGCONT)


def test_prediction_log_accounting_is_exact_across_workers(repository: Path) -> None:
    """A log queue too small for the load: written (files, by pid) + dropped (summed over workers) = requests served."""
    with serve_host(repository, workers=2, predlog_queue_size=2, predlog_flush_interval_s=0.3) as host:
        sent = infer_until_both_workers_served(host, "local", 64)
        workers = set(host.pids("worker").values())

        def settled() -> bool:
            _, found = scrape(host.port)
            if found["tensorgate_predlog_queue_depth"][()] != 0:
                return False
            written = sum(found["tensorgate_predlog_records_total"].values())
            return written == sum(records_by_pid(host.log_dir).values())

        host.wait_until(settled, "every queued record written")

        def exact() -> None:
            _, found = scrape(host.port)
            written = found["tensorgate_predlog_records_total"][(("model", "local"),)]
            dropped = found["tensorgate_predlog_dropped_total"]
            assert dropped and set(dict(labels)["reason"] for labels in dropped) == {"queue_full"}
            assert served(found, "local") == sent
            assert written + sum(dropped.values()) == sent
            by_pid = records_by_pid(host.log_dir)
            assert set(by_pid) == workers and sum(by_pid.values()) == written

        eventually(exact)


async def test_snapshots_keep_a_gone_process_counts(run_dir: Path) -> None:
    """A process leaves its counts every interval; they count for the host once that pid no longer answers."""
    stats = VersionStats()
    stats.request_done(True, 5, 0, 10)
    source = Process("worker-1", run_dir, 2)
    source.serve(5)
    server = ControlServer(
        "worker-1",
        control_endpoint(run_dir, "worker-1"),
        source.registry.collect,
        lambda: iter([("m", "1", stats)]),
        snapshots=snapshot_dir(run_dir),
        interval_s=0.01,
    )
    await server.start()
    try:
        path = server.snapshot_path
        assert path is not None
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            await anyio.sleep(0.01)
    finally:
        await server.close()
    assert retired(snapshot_dir(run_dir), {os.getpid()}) == []  # this pid is live: its own answer counts
    (gone,) = retired(snapshot_dir(run_dir), set())
    assert gone["process"] == "worker-1" and gone["stats"][0][2]["inference_count"] == 5
    merged = merge_families([("worker-1", gone["metrics"])])
    assert samples(merged, "tensorgate_requests_total")[OK] == 5


def host_dir(host: Host) -> Path:
    """The host's run directory (from a worker's environment)."""
    pid = host.pids("worker")["worker-0"]
    for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if variable.startswith(ENV_DIR.encode() + b"="):
            return Path(variable.split(b"=", 1)[1].decode())
    raise AssertionError("worker-0 has no run directory")


def test_a_killed_worker_counts_stay_in_the_sums(repository: Path) -> None:
    """SIGKILL a worker that served requests: once it is replaced, both workers still count its requests."""
    with serve_host(repository, workers=2) as host:
        sent = infer_until_both_workers_served(host, "local", 16)
        snapshots = snapshot_dir(host_dir(host))

        def flushed() -> bool:  # every worker's snapshot counts everything it served
            total = 0.0
            for old in retired(snapshots, set()):
                if str(old["process"]).startswith("worker-"):
                    total += served(dict(flatten(old["metrics"])), "local")
            return total == sent

        host.wait_until(flushed, "snapshots with every request")
        old_pid = host.pids("worker")["worker-1"]
        os.kill(old_pid, signal.SIGKILL)
        host.wait_until(lambda: host.pids("worker").get("worker-1") not in (None, old_pid), "worker-1 replaced")
        host.wait_workers_loaded()
        answers: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(answers) < 2 and time.monotonic() < deadline:
            answered, found = scrape(host.port)
            answers[answered] = served(found, "local")
        assert answers == {"worker-0": sent, "worker-1": sent}

        def statistics() -> None:
            (local,) = get_json(host.port, "/v2/models/local/stats")["model_stats"]
            assert local["inference_count"] == sent

        eventually(statistics)


async def test_a_peer_that_goes_missing_is_logged_once(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A warning when a peer that answered stops answering; none for a peer not started yet, none repeated."""
    a, b = Process("worker-0", run_dir, 2), Process("worker-1", run_dir, 2)
    await a.view.start()
    try:
        await a.view.metrics()  # worker-1 not started yet: no warning
        await b.view.start()
        await a.view.metrics()
        await b.view.close()
        await a.view.metrics()
        await a.view.metrics()
    finally:
        await a.view.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "control call" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("worker-1 did not answer")


def test_snapshots_of_dead_processes_are_folded_into_one(run_dir: Path) -> None:
    """Past COMPACT_AT dead processes, their snapshots become one file with the same sums."""
    snapshots = snapshot_dir(run_dir)
    source = Process("worker-1", run_dir, 2)
    source.serve(1)
    stats = VersionStats()
    stats.request_done(True, 1, 0, 10)
    server = ControlServer("worker-1", "ipc://unused", source.registry.collect, lambda: iter([("m", "1", stats)]))
    data = server.snapshot()
    unused_pids = [99_999_990 - index for index in range(COMPACT_AT + 1)]  # above any pid_max: never alive
    for pid in unused_pids[:-1]:
        replace_file(snapshots / f"worker-1-{pid}.json", data)
    replace_file(snapshots / f"worker-1-{os.getpid()}.json", data)  # a live process's: never folded

    def host_sums() -> tuple[float, int]:
        parts = retired(snapshots, set())
        merged = merge_families([(str(index), part["metrics"]) for index, part in enumerate(parts)])
        entry = parts[0]["stats"][0][2]
        for part in parts[1:]:
            merge_entry(entry, part["stats"][0][2])
        return samples(merged, "tensorgate_requests_total")[OK], entry["inference_count"]

    assert host_sums() == (COMPACT_AT + 1, COMPACT_AT + 1)
    assert compact(snapshots) == COMPACT_AT
    assert sorted(path.name for path in snapshots.glob("*.json")) == ["retired.json", f"worker-1-{os.getpid()}.json"]
    assert host_sums() == (COMPACT_AT + 1, COMPACT_AT + 1)
    replace_file(snapshots / f"worker-1-{unused_pids[-1]}.json", data)
    assert compact(snapshots) == 0  # one dead process's file: kept as it is until there are COMPACT_AT
    assert host_sums() == (COMPACT_AT + 2, COMPACT_AT + 2)


def test_grpc_statistics_with_one_worker_and_the_engine(repository: Path) -> None:
    """``--workers 1 --engine``: gRPC ModelStatistics counts the engine's batches with the worker's requests."""
    grpc_port = free_port()
    with serve_host(repository, workers=1, engine=True, grpc_port=grpc_port) as host:
        for _ in range(5):
            assert request(host.port, "POST", "/v2/models/simple/infer", ADD_SUB, JSON).status == 200
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            (stats,) = client.get_inference_statistics("simple", as_json=True)["model_stats"]
        finally:
            client.close()
        assert int(stats["inference_count"]) == 5
        # The batches formed in the engine: the worker alone would report no execution at all.
        assert 0 < int(stats["execution_count"]) <= 5
        rows = sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in stats["batch_stats"])
        assert rows == 5

        def merged() -> None:
            _, found = scrape(host.port)
            up = found["tensorgate_host_process_up"]
            assert up == {(("process", "engine-cpu"),): 1, (("process", "worker-0"),): 1}
            assert found["tensorgate_batch_size_sum"][(("model", "simple"), ("version", "1"))] == 5

        eventually(merged)
