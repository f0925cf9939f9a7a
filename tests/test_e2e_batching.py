"""End to end: dynamic batching behind real HTTP, tritonclient's statistics and timeouts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.models import ModelManager
from tests.gated import GatedRuntime, Runtimes
from tests.onnx_models import identity, write_model
from tests.rawhttp import request
from tests.server import RunningServer, admin, prediction_log, serve

BATCHED = """
max_batch_size = 8
inline_threshold_us = 0
[batching]
max_queue_delay_ms = 20
max_queue_size = 4
priority_levels = 2
"""


@pytest.fixture(scope="module")
def runtimes() -> Runtimes:
    return Runtimes()


@pytest.fixture(scope="module")
def managers() -> list[ModelManager]:
    return []


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtimes: Runtimes, managers: list[ModelManager]
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "batched", 1, identity("FP32"), config=BATCHED)
    write_model(root, "plain", 1, identity("FP32"))
    write_model(root, "fixed", 1, identity("FP32", [1, 4]), config="max_batch_size = 4\n")
    with serve(root, loader=runtimes, on_ready=managers.append, strict_readiness=False) as running:
        yield running


def wait_queued(managers: list[ModelManager], count: int, timeout_s: float = 10.0) -> None:
    """Wait until the batched model's queue holds exactly ``count`` requests."""
    batcher = managers[0].model("batched").versions[1].batcher
    assert batcher is not None
    deadline = time.monotonic() + timeout_s
    while batcher.queued != count:
        assert time.monotonic() < deadline, f"queue holds {batcher.queued}, not {count}"
        time.sleep(0.005)


def body(value: float, rows: int = 1, **parameters: object) -> bytes:
    doc: dict[str, object] = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [rows, 4], "data": [value] * (4 * rows)}]
    }
    if parameters:
        doc["parameters"] = parameters
    return orjson.dumps(doc)


def infer(server: RunningServer, payload: bytes, model: str = "batched") -> tuple[int, dict[str, object]]:
    reply = request(server.port, "POST", f"/v2/models/{model}/infer", payload)
    return reply.status, reply.json()  # type: ignore[return-value]


def test_concurrent_http_requests_are_batched_and_answered_exactly(server: RunningServer, runtimes: Runtimes) -> None:
    runtime = runtimes.by_model["batched"]
    before = len(runtime.calls)
    values = [float(i) + 0.25 for i in range(4)] * 8
    with ThreadPoolExecutor(4) as pool:  # 4 at a time: the queue holds 4
        replies = list(pool.map(lambda v: infer(server, body(v)), values))
    for value, (status, doc) in zip(values, replies, strict=True):
        assert status == 200, doc
        assert doc["outputs"][0]["data"] == [value] * 4  # type: ignore[index]
    assert len(runtime.calls) - before < len(values)


@contextmanager
def held_batch(server: RunningServer, runtime: GatedRuntime) -> Iterator[ThreadPoolExecutor]:
    """A full batch (8 rows) runs, held at the gate, for the duration of the block.

    Yields a thread pool for the block's own requests; on the way out the gate opens and the
    held batch must have been answered 200.
    """
    runtime.hold()
    try:
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(infer, server, body(1.0, rows=8))
            runtime.wait_entered()
            yield pool
            runtime.release()
            assert first.result()[0] == 200
    finally:
        runtime.release()


def test_a_full_queue_is_503_with_retry_after(
    server: RunningServer, runtimes: Runtimes, managers: list[ModelManager]
) -> None:
    with held_batch(server, runtimes.by_model["batched"]) as pool:
        # One batch of 8 rows runs (held) and 4 requests fill the queue: the next is refused.
        waiting = [pool.submit(infer, server, body(2.0)) for _ in range(4)]
        wait_queued(managers, 4)
        reply = request(server.port, "POST", "/v2/models/batched/infer", body(3.0))
        assert reply.status == 503 and "queue is full" in reply.json()["error"]  # type: ignore[index]
        assert reply.headers["retry-after"]
    assert [w.result()[0] for w in waiting] == [200] * 4


def test_client_timeout_is_a_deadline(server: RunningServer, runtimes: Runtimes) -> None:
    client = httpclient.InferenceServerClient(server.host)
    try:
        with held_batch(server, runtimes.by_model["batched"]):
            tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            with pytest.raises(InferenceServerException, match="deadline") as raised:
                client.infer("batched", [tensor], timeout=30_000)  # us
            assert raised.value.status() == "504"
    finally:
        client.close()


def test_a_client_that_disconnects_while_queued_is_never_computed(
    server: RunningServer, runtimes: Runtimes, managers: list[ModelManager]
) -> None:
    runtime = runtimes.by_model["batched"]
    batcher = managers[0].model("batched").versions[1].batcher
    assert batcher is not None
    with held_batch(server, runtime):
        payload = body(77.0)
        sock = socket.create_connection(("127.0.0.1", server.port))
        head = f"POST /v2/models/batched/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n"
        sock.sendall(head.encode() + payload)
        wait_queued(managers, 1)  # behind the held batch
        sock.close()
        deadline = time.monotonic() + 10
        while not any(r.client is not None and r.client.gone() for r in batcher._queue.waiting()):
            assert time.monotonic() < deadline, "uvicorn never marked the client as gone"
            time.sleep(0.005)
        # Leaving the block opens the gate: the next batch forms without the departed request.
    assert infer(server, body(5.0))[0] == 200
    assert batcher.queued == 0
    assert all(float(call["INPUT0"].reshape(-1)[0]) != 77.0 for call in runtime.calls)
    # It is counted, and logged as a cancelled request (499, nginx's "client closed request").
    deadline = time.monotonic() + 10
    while True:
        records = prediction_log(server.settings.log_dir / "batched")
        gone = [r for r in records if r["status"] == 499]
        if gone or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(gone) == 1 and gone[0]["inputs"]["INPUT0"]["data"] == [77.0] * 4 and gone[0]["outputs"] is None
    metrics = request(server.port, "GET", "/metrics").body.decode()
    assert 'tensorgate_requests_total{code="499",model="batched",role="primary",version="1"} 1.0' in metrics


def test_batching_options_are_validated(server: RunningServer) -> None:
    assert infer(server, body(1.0, priority=3))[0] == 400
    assert infer(server, body(1.0, priority=True))[0] == 400
    assert infer(server, body(1.0, timeout=-5))[0] == 400
    status, doc = infer(server, body(1.0, rows=9))
    assert status == 400 and "max_batch_size 8" in doc["error"]  # type: ignore[operator]
    assert infer(server, body(1.0, priority=1, timeout=5_000_000))[0] == 200


def test_statistics_through_tritonclient(server: RunningServer) -> None:
    for i in range(3):
        assert infer(server, body(float(i)), model="plain")[0] == 200
    client = httpclient.InferenceServerClient(server.host)
    try:
        plain = client.get_inference_statistics("plain")["model_stats"]
        assert [(s["name"], s["version"]) for s in plain] == [("plain", "1")]
        assert plain[0]["inference_count"] == 3 and plain[0]["execution_count"] == 3
        assert plain[0]["inference_stats"]["success"]["count"] == 3
        assert plain[0]["last_inference"] > 1_700_000_000_000
        batched = client.get_inference_statistics("batched", "1")["model_stats"][0]
        assert batched["inference_count"] >= batched["execution_count"] > 0
        assert {b["batch_size"] for b in batched["batch_stats"]} <= set(range(1, 9))
        everything = client.get_inference_statistics()["model_stats"]
        assert {s["name"] for s in everything} == {"batched", "plain"}
    finally:
        client.close()
    assert request(server.port, "GET", "/v2/models/plain/versions/3/stats").status == 404


def test_batching_needs_a_dynamic_batch_dimension(server: RunningServer) -> None:
    meta = request(server.port, "GET", "/v2/models/fixed").json()
    assert meta["parameters"]["state"] == "FAILED" and "error" not in meta["parameters"]  # type: ignore[index]
    described = {m["name"]: m for m in admin(server, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    assert "needs a dynamic first (batch) dimension, but INPUT0" in described["fixed"]["versions"]["1"]["error"]
