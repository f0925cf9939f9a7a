"""Shadows, deadlines, priorities, cancellation, remote Triton and its circuit breaker on a 2-worker host.

Real processes (tests/host.py: supervisor, CPU engine, two workers on one port) serving real
ONNX models, and a real Triton server (PyTriton, tests/triton_server.py) for the remote
versions. Each behaviour is the single-process one (tests/test_shadow.py, tests/test_batching.py,
tests/test_triton.py), checked where the host changes things: a shadow copy is computed in
whichever worker took the request and counted host-wide; a deadline or a priority reaches the
engine's batcher; a client that leaves is withdrawn from the engine's queue; a remote version is
served by every worker with no engine load, and every worker's breaker opens on its own.
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.host import Host, serve_host
from tests.onnx_models import add_sub, slow_matmul, write_model
from tests.rawhttp import request, send_and_leave
from tests.server import AUTH
from tests.test_engine import batch_counter
from tests.test_host_lifecycle import host_inflight
from tests.test_host_metrics import eventually, scrape
from tests.test_host_state import host_admin, pinned_connections
from tests.test_triton import infer_json, remote
from tests.triton_server import TritonServer

JSON = {"Content-Type": "application/json"}
#: Version v of ``mirrored`` adds 100 * v to OUTPUT0: an answer says which version computed it.
OFFSET = 100
ADD_SUB = orjson.dumps(
    {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16} for n in ("INPUT0", "INPUT1")]}
)
#: A batch of the slow model takes a good fraction of a second; one instance, so batches queue.
SLOW = """
placement = "engine"
max_batch_size = 1
instance_count = 1
[batching]
max_queue_delay_ms = 1
priority_levels = 2
[onnx]
graph_optimization = "disable"
intra_op_threads = 1
"""
SLOW_BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
#: The batch counter waits this long for a second row: a request sent well within it joins.
PATIENT_MS = 3000


def post(port: int, model: str, body: dict[str, Any], timeout_s: float = 60) -> tuple[int, Any, dict[str, str]]:
    """One inference on a fresh connection (whichever worker accepts it): status, JSON answer, headers."""
    reply = request(port, "POST", f"/v2/models/{model}/infer", orjson.dumps(body), JSON, timeout_s=timeout_s)
    return reply.status, reply.json(), reply.headers


def counter_body(**parameters: Any) -> dict[str, Any]:
    """One row of 0.0 for the batch counter (its answer is 0.0 + the rows in its batch)."""
    body: dict[str, Any] = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def predlog_records(log_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every complete prediction-log record so far, with the pid of the process that wrote it (in its file name)."""
    found: list[tuple[int, dict[str, Any]]] = []
    for path in log_dir.rglob("*.jsonl*"):
        pid = int(path.name.split("-")[-2])
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        found += [(pid, orjson.loads(line)) for line in data.splitlines() if line.endswith(b"}")]
    return found


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """Two workers and the CPU engine over a shadowed model, a slow one and a patient batch counter."""
    root = tmp_path_factory.mktemp("features-repo")
    batched = 'version_policy = "all"\nplacement = "engine"\nmax_batch_size = 8\n[batching]\nmax_queue_delay_ms = 1\n'
    for version in (1, 2):
        write_model(root, "mirrored", version, add_sub(OFFSET * version), batched)
    write_model(root, "slow", 1, slow_matmul(size=1024), SLOW)
    patient = f'placement = "engine"\nmax_batch_size = 8\n[batching]\nmax_queue_delay_ms = {PATIENT_MS}\n'
    write_model(root, "patient", 1, batch_counter(), patient)
    # A generous shadow timeout: a copy counted as timed out on a loaded machine would fail the sums.
    with serve_host(root, workers=2, predlog_flush_interval_s=0.01, shadow_timeout_s=30) as running:
        yield running


def test_shadow_copies_are_computed_by_both_workers_and_counted_host_wide(host: Host) -> None:
    status, doc = host_admin(
        host.port, "PUT", "/admin/models/mirrored/route", {"weights": {"1": 100}, "shadow": {"2": 1.0}}
    )
    assert status == 200, doc
    workers = set(host.pids("worker").values())
    sent = 0
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            answers = list(
                pool.map(lambda _: request(host.port, "POST", "/v2/models/mirrored/infer", ADD_SUB, JSON), range(8))
            )
            sent += len(answers)
            for reply in answers:  # only the primary's answers reach the client
                assert reply.status == 200, reply.body
                assert reply.headers["x-model-version"] == "1"
                doc = reply.json()
                assert doc["outputs"][0]["data"][0] == 2 + OFFSET  # type: ignore[index]
            shadows = {pid for pid, r in predlog_records(host.log_dir) if r["role"] == "shadow"}
            if sent >= 32 and workers <= shadows:
                break
        else:
            raise AssertionError(f"shadow records never came from both workers: {predlog_records(host.log_dir)[-4:]}")

    # The prediction log: one primary and one shadow record per request, written by the worker that took it.
    def logged() -> None:
        records = [(pid, r) for pid, r in predlog_records(host.log_dir) if r["model"] == "mirrored"]
        primaries = [r for _, r in records if r["role"] == "primary"]
        shadows = [(pid, r) for pid, r in records if r["role"] == "shadow"]
        assert len(primaries) == sent and len(shadows) == sent, (len(primaries), len(shadows), sent)
        assert {r["version"] for r in primaries} == {"1"} and {r["version"] for _, r in shadows} == {"2"}
        assert {pid for pid, _ in shadows} == workers
        assert all(r["outputs"]["OUTPUT0"]["data"][0] == 2 + 2 * OFFSET for _, r in shadows)  # version 2 computed them

    eventually(logged, timeout_s=60)

    # /metrics, from either worker: every copy completed, summed over both workers.
    def counted() -> None:
        _, found = scrape(host.port)
        outcomes = {
            dict(labels)["outcome"]: value
            for labels, value in found["tensorgate_shadow_requests_total"].items()
            if dict(labels).get("model") == "mirrored" and dict(labels).get("version") == "2"
        }
        assert outcomes.get("completed") == sent, outcomes
        assert outcomes.get("failed", 0) == outcomes.get("timed_out", 0) == outcomes.get("dropped", 0) == 0

    eventually(counted, timeout_s=60)
    # /admin/models (whichever worker answers) counts copies too; the route goes back to no shadow.
    status, doc = host_admin(host.port, "GET", "/admin/models")
    model = next(m for m in doc["models"] if m["name"] == "mirrored")
    assert 0 < model["shadow"]["2"]["mirrored"] <= sent
    status, doc = host_admin(host.port, "PUT", "/admin/models/mirrored/route", {"weights": {"1": 100}})
    assert status == 200, doc


def test_a_deadline_expires_in_the_busy_engine_queue_with_504(host: Host) -> None:
    with ThreadPoolExecutor(6) as pool:
        # A backlog of slow calls in the engine (one instance, one row a batch): seconds of work queued.
        backlog = [pool.submit(post, host.port, "slow", SLOW_BODY) for _ in range(4)]
        host_inflight(host.port, 4)
        started = time.monotonic()
        status, doc, _ = post(host.port, "slow", {**SLOW_BODY, "parameters": {"timeout": 100_000}})
        took = time.monotonic() - started
        assert status == 504, doc
        assert "deadline" in doc["error"]
        assert took < 10  # at the deadline, not after the backlog
        assert [f.result(timeout=120)[0] for f in backlog] == [200] * 4
    # Without the backlog the engine answers (a generous deadline is met).
    status, doc, _ = post(host.port, "slow", {**SLOW_BODY, "parameters": {"timeout": 60_000_000}})
    assert status == 200, doc


def test_priorities_are_checked_and_the_higher_one_jumps_the_engine_queue(host: Host) -> None:
    for bad in (3, -1, "high"):  # two levels: checked by the worker before the engine
        status, doc, _ = post(host.port, "slow", {**SLOW_BODY, "parameters": {"priority": bad}})
        assert status == 400, doc
        assert "priority" in doc["error"]
    status, doc, _ = post(host.port, "slow", {**SLOW_BODY, "parameters": {"timeout": -5}})
    assert status == 400 and "timeout" in doc["error"]

    # A backlog of low-priority calls (level 2) from both workers, one computed at a time; a
    # level-1 call sent after them is taken next, ahead of those still queued.
    finished: list[str] = []
    lock = threading.Lock()

    def call(name: str, priority: int) -> int:
        status, doc, _ = post(host.port, "slow", {**SLOW_BODY, "parameters": {"priority": priority}}, timeout_s=180)
        with lock:
            finished.append(name)
        assert status == 200, doc
        return status

    with ThreadPoolExecutor(8) as pool:
        low = [pool.submit(call, f"low-{i}", 2) for i in range(5)]
        host_inflight(host.port, 5)
        high = pool.submit(call, "high", 1)
        assert high.result(timeout=180) == 200
        assert [f.result(timeout=180) for f in low] == [200] * 5
    # Ahead of at least the last two low ones (one was computing when it came, one may have
    # been taken into the instance already).
    assert finished.index("high") <= 3, finished


def test_a_client_that_leaves_is_withdrawn_from_the_engine_queue(host: Host) -> None:
    # The leaver's request waits PATIENT_MS for a second row; when its client goes, the worker
    # withdraws it from the engine's queue, so the next request (sent well within that wait,
    # to either worker) is a batch of one: 0.0 + 1 row.
    body = orjson.dumps(counter_body())
    leaver = threading.Thread(target=send_and_leave, args=(host.port, "/v2/models/patient/infer", body, 0.2))
    leaver.start()
    leaver.join(timeout=15)
    time.sleep(0.3)  # the worker notices within its 50 ms check
    status, doc, _ = post(host.port, "patient", counter_body())
    assert status == 200, doc
    assert doc["outputs"][0]["data"] == [1.0]
    # Control: two requests together share a batch (so the one above was alone because of the withdrawal).
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: post(host.port, "patient", counter_body()), range(2)))
    assert [a[1]["outputs"][0]["data"] for a in answers] == [[2.0], [2.0]], answers


# --- remote Triton -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A real Triton server (PyTriton); a missing one skips, or fails under TENSORGATE_REQUIRE_SERVERS=1."""
    with TritonServer(tmp_path_factory.mktemp("host-triton")) as server:
        yield server


def infer_on(connection: http.client.HTTPConnection, model: str) -> tuple[int, Any, dict[str, str]]:
    """One scorer row on a pinned keep-alive connection (so to one known worker)."""
    body = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [[0.5] * 16]}]})
    connection.request("POST", f"/v2/models/{model}/infer", body, JSON)
    response = connection.getresponse()
    headers = {k.lower(): v for k, v in response.getheaders()}
    return response.status, json.loads(response.read() or b"{}"), headers


def test_remote_triton_versions_on_every_worker_without_the_engine_and_each_breaker_opens(
    triton: TritonServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    (root / "scorer" / "1").mkdir(parents=True)
    extra = "retries = 0\nbreaker_failures = 3\nbreaker_reset_s = 5.0\nhealth_interval_s = 0.5\n"
    (root / "scorer" / "config.toml").write_text(remote(triton.http_url, "scorer", extra))
    (root / "batched" / "1").mkdir(parents=True)
    top = "max_batch_size = 16\n[batching]\nmax_queue_delay_ms = 2\n"
    (root / "batched" / "config.toml").write_text(remote(triton.http_url, "scorer", "", top))
    with serve_host(root, workers=2) as host:
        workers = host.pids("worker")
        for model in ("scorer", "batched"):
            # Loaded by each worker (a connection of its own to Triton), never by the engine.
            loaded = [r for r in host.records() if f"model {model!r} version 1 READY" in str(r.get("message"))]
            assert {r.get("process") for r in loaded} == set(workers), loaded
            assert infer_json(host.port, f"/v2/models/{model}/infer", [[0.5] * 16]).status == 200
        engine_lines = [r for r in host.records() if r.get("process", "").startswith("engine-")]
        assert not [r for r in engine_lines if "scorer" in str(r.get("message")) or "batched" in str(r.get("message"))]

        connections = pinned_connections(host.port)
        try:
            for connection in connections.values():
                status, doc, _ = infer_on(connection, "scorer")
                assert status == 200, doc
            triton.kill()
            for worker, connection in connections.items():
                # Each worker's own breaker: three remote failures (502), then open (503 at once).
                for _ in range(3):
                    status, doc, _ = infer_on(connection, "scorer")
                    assert status == 502, (worker, doc)
                    assert "127.0.0.1" not in json.dumps(doc)
                started = time.monotonic()
                status, doc, headers = infer_on(connection, "scorer")
                assert status == 503, (worker, doc)
                assert time.monotonic() - started < 2
                assert "circuit is open" in doc["error"]
                assert int(headers["retry-after"]) >= 1
                connection.request("GET", "/v2/health/ready")  # a remote outage leaves the worker ready
                ready = connection.getresponse()
                ready.read()
                assert ready.status == 200, worker
            _, found = scrape(host.port)
            gauges = found["tensorgate_remote_circuit_open"]
            assert any(dict(k).get("model") == "scorer" and v >= 1 for k, v in gauges.items()), gauges
            status, doc = host_admin(host.port, "GET", "/admin/models")
            scorer = next(m for m in doc["models"] if m["name"] == "scorer")
            assert scorer["versions"]["1"]["circuit"] == "open"
        finally:
            for connection in connections.values():
                connection.close()

        # Triton back (same ports): past breaker_reset_s each worker's next call probes the
        # remote, closes its circuit and serves again.
        triton.start()
        connections = pinned_connections(host.port)
        try:
            for worker, connection in connections.items():
                statuses = []
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    status, _, _ = infer_on(connection, "scorer")
                    statuses.append(status)
                    if status == 200:
                        break
                    time.sleep(0.2)
                assert statuses[-1] == 200 and set(statuses) <= {200, 502, 503}, (worker, statuses)
                connection.request("GET", "/admin/models", headers=AUTH)
                response = connection.getresponse()
                described = {m["name"]: m for m in json.loads(response.read())["models"]}
                assert described["scorer"]["versions"]["1"]["circuit"] == "closed", worker
        finally:
            for connection in connections.values():
                connection.close()
