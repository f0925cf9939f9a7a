"""Operations: /metrics after real traffic, readiness, drain, the concurrency limit, slow clients, header limits."""

from __future__ import annotations

import contextlib
import logging
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.gated import Runtimes
from tests.onnx_models import identity, write_model
from tests.rawhttp import Reply, chunk, read_reply, request
from tests.server import RunningServer, admin, serve

BATCHED = "max_batch_size = 8\n[batching]\nmax_queue_delay_ms = 5\n"
GOOD = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
CONTRACT_FAMILIES = {
    "tensorgate_requests": ("counter", {"model", "version", "role", "code"}),
    "tensorgate_request_duration_seconds": ("histogram", {"model", "version", "role"}),
    "tensorgate_queue_duration_seconds": ("histogram", {"model", "version"}),
    "tensorgate_compute_duration_seconds": ("histogram", {"model", "version"}),
    "tensorgate_batch_size": ("histogram", {"model", "version"}),
    "tensorgate_queue_depth": ("gauge", {"model", "version"}),
    "tensorgate_inflight_requests": ("gauge", set()),
    "tensorgate_model_state": ("gauge", {"model", "version", "state"}),
    "tensorgate_route_weight": ("gauge", {"model", "version"}),
    "tensorgate_shadow_agreement_ratio": ("gauge", {"model", "version"}),
    "tensorgate_shadow_dropped": ("counter", {"model", "version"}),
    "tensorgate_predlog_records": ("counter", {"model"}),
    "tensorgate_predlog_dropped": ("counter", {"model", "reason"}),
    "tensorgate_predlog_queue_depth": ("gauge", set()),
    "tensorgate_drift_psi": ("gauge", {"model", "version", "feature"}),
    "tensorgate_model_load_failures": ("counter", {"model", "reason"}),
}


def infer(server: RunningServer, path: str = "/v2/models/plain/infer", body: bytes = GOOD, **headers: str) -> Reply:
    return request(server.port, "POST", path, body, {"Content-Type": "application/json", **headers})


def scrape(server: RunningServer) -> dict[str, Any]:
    reply = request(server.port, "GET", "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(reply.body.decode())}


def samples(family: Any, suffix: str = "", **labels: str) -> list[Sample]:
    return [
        s
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(family: Any, suffix: str = "", **labels: str) -> float:
    found = samples(family, suffix, **labels)
    assert len(found) == 1, (family.name, labels, family.samples)
    return float(found[0].value)


# -- metrics -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ops-repo")
    write_model(root, "plain", 1, identity("FP32"))
    write_model(root, "plain", 2, identity("FP32"))
    write_model(root, "plain", 3, identity("FP32"))
    write_model(root, "batched", 1, identity("FP32"), config=BATCHED)
    write_model(root, "broken", 1, identity("FP32"))
    (root / "broken" / "2").mkdir()
    (root / "broken" / "2" / "model.onnx").write_bytes(b"not onnx")
    return root


def test_metrics_after_traffic_have_every_contract_family_and_label(repository: Path) -> None:
    with serve(repository, strict_readiness=False) as server:
        for version in (1, 2):
            assert admin(server, "POST", f"/admin/models/plain/versions/{version}/load", {}).status == 200
        route = {"weights": {"1": 50, "2": 50}, "shadow": {"3": 1.0}}
        assert admin(server, "PUT", "/admin/models/plain/route", route).status == 200
        served = [infer(server).headers["x-model-version"] for _ in range(40)]
        assert infer(server, "/v2/models/plain/versions/2/infer").status == 200
        assert infer(server, body=b"{not json").status == 400
        assert infer(server, "/v2/models/nosuch/infer").status == 404
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: infer(server, "/v2/models/batched/infer"), range(16)))
        assert all(r.status == 200 for r in replies)
        time.sleep(0.3)  # shadow copies run after the responses
        families = scrape(server)

    for name, (kind, labels) in CONTRACT_FAMILIES.items():
        assert name in families, f"{name} missing"
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert labels <= set(sample.labels), (name, sample)

    requests = families["tensorgate_requests"]
    by_version = {v: served.count(v) for v in ("1", "2")}
    assert by_version["1"] > 0 and by_version["2"] > 0
    canary_role = {"1": "canary", "2": "primary"}  # on a tie, the higher version is the primary
    for version, count in by_version.items():
        role = canary_role[version]
        assert value(requests, "_total", model="plain", version=version, role=role, code="200") == count
        every_code = sum(s.value for s in samples(requests, "_total", model="plain", version=version, role=role))
        latency = families["tensorgate_request_duration_seconds"]
        assert value(latency, "_count", model="plain", version=version, role=role) == every_code
    assert value(requests, "_total", model="plain", version="2", role="pinned", code="200") == 1
    assert sum(s.value for s in samples(requests, "_total", code="400", model="plain")) == 1
    assert value(requests, "_total", model="", version="", role="", code="404") == 1  # no label per unknown name
    assert value(requests, "_total", model="batched", version="1", role="primary", code="200") == 16

    assert value(families["tensorgate_batch_size"], "_sum", model="batched", version="1") == 16
    assert value(families["tensorgate_queue_duration_seconds"], "_count", model="batched", version="1") == 16
    assert value(families["tensorgate_compute_duration_seconds"], "_count", model="batched", version="1") >= 1
    assert value(families["tensorgate_queue_depth"], model="batched", version="1") == 0
    assert value(families["tensorgate_inflight_requests"]) == 0
    state = families["tensorgate_model_state"]
    assert value(state, model="plain", version="1", state="READY") == 1
    assert value(state, model="plain", version="1", state="LOADING") == 0
    assert value(state, model="broken", version="2", state="FAILED") == 1
    assert value(families["tensorgate_route_weight"], model="plain", version="2") == 50
    assert value(families["tensorgate_shadow_agreement_ratio"], model="plain", version="3") == 1.0
    assert value(families["tensorgate_shadow_dropped"], "_total", model="plain", version="3") == 0
    assert value(families["tensorgate_model_load_failures"], "_total", model="broken", reason="invalid_model") == 1
    assert "process_resident_memory_bytes" in families


def test_metrics_accepts_openmetrics(repository: Path) -> None:
    with serve(repository, strict_readiness=False) as server:
        reply = request(server.port, "GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.body.rstrip().endswith(b"# EOF")


# -- readiness and drain -----------------------------------------------------------------------


def test_strict_readiness_waits_for_every_routed_version(repository: Path) -> None:
    with serve(repository, ready=False) as server:
        assert server.server.lifecycle is not None
        time.sleep(1.0)  # start-up is over well before this: "broken" 2 failed
        assert request(server.port, "GET", "/v2/health/live").status == 200
        reply = request(server.port, "GET", "/v2/health/ready")
        assert reply.status == 503 and "routed version" in reply.json()["error"]  # type: ignore[index]
        # Routing "broken" to its good version makes the server ready.
        assert admin(server, "POST", "/admin/models/broken/versions/1/load", {}).status == 200
        swap = admin(server, "POST", "/admin/models/broken/swap", {"version": "1"})
        assert swap.status == 200, swap.body
        assert request(server.port, "GET", "/v2/health/ready").status == 200


def test_a_drain_fails_readiness_and_refuses_new_work_with_connection_close(repository: Path) -> None:
    with serve(repository, strict_readiness=False) as server:
        assert infer(server).status == 200
        server.server.lifecycle.begin_drain()
        ready = request(server.port, "GET", "/v2/health/ready")
        assert ready.status == 503 and "shutting down" in ready.json()["error"]  # type: ignore[index]
        assert request(server.port, "GET", "/v2/health/live").status == 200
        refused = infer(server, **{"x-request-id": "late-1"})
        assert refused.status == 503 and refused.headers["connection"] == "close"
        assert refused.headers["retry-after"] == "1" and refused.headers["x-request-id"] == "late-1"
        assert value(scrape(server)["tensorgate_draining"]) == 1


# -- the concurrency limit ---------------------------------------------------------------------


def test_a_flood_past_the_concurrency_limit_gets_fast_503s_and_accepted_requests_finish(tmp_path: Path) -> None:
    write_model(tmp_path, "plain", 1, identity("FP32"), config="inline_threshold_us = 0\ninstance_count = 4\n")
    runtimes = Runtimes()
    with serve(tmp_path, loader=runtimes, max_concurrent_requests=4) as server:
        gate = runtimes.by_model["plain"]
        gate.hold()
        with ThreadPoolExecutor(4) as held_pool:
            held = [held_pool.submit(infer, server) for _ in range(4)]
            for _ in range(4):
                gate.wait_entered()
            latencies, statuses = [], []

            def flood(_: int) -> None:
                started = time.perf_counter()
                reply = infer(server)
                latencies.append(time.perf_counter() - started)
                statuses.append((reply.status, reply.headers.get("retry-after")))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(flood, range(40)))
            gate.release()
            assert [f.result().status for f in held] == [200] * 4
        assert statuses == [(503, "1")] * 40
        assert statistics.median(latencies) < 0.05, latencies
        assert infer(server).status == 200  # the limit frees up as requests finish


# -- slow clients and header limits ------------------------------------------------------------


@pytest.fixture
def guarded(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, strict_readiness=False, header_timeout_s=1.0, body_timeout_s=1.0) as server:
        yield server


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing the connection (fails if it stays open)."""
    sock.settimeout(seconds)
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


def test_slowloris_connections_are_closed_while_a_normal_client_is_served(guarded: RunningServer) -> None:
    slow = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(200)]
    stop = threading.Event()

    def drip() -> None:
        for i in range(40):  # at most ~10 s of one byte per connection every 0.25 s
            if stop.wait(0.25):
                return
            for sock in slow:
                with contextlib.suppress(OSError):  # closed by the server already
                    sock.send(b"POST /v2/models/plain/infer HTTP/1.1\r\nX-Slow: "[i : i + 1] or b"a")

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        started = time.perf_counter()
        assert infer(guarded).status == 200
        assert time.perf_counter() - started < 1.0
        answers = [closed_within(sock, 5.0) for sock in slow]
    finally:
        stop.set()
        dripper.join()
        for sock in slow:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") or a == b"" for a in answers)
    assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers) >= 190
    assert infer(guarded).status == 200
    deadline = time.monotonic() + 5
    while len(guarded.server.server_state.connections) > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(guarded.server.server_state.connections) <= 2


def test_a_slow_body_gets_408_at_the_body_deadline(guarded: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(b"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        started = time.monotonic()
        for _ in range(3):
            time.sleep(0.3)
            try:
                sock.send(b" ")
            except OSError:
                break
        answer = closed_within(sock, 5.0)
        assert time.monotonic() - started < 4.0
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request body not received in time" in answer
    assert infer(guarded).status == 200


def test_a_connection_that_sends_nothing_is_closed(guarded: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        assert closed_within(sock, 5.0).startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Big": "a" * 64 * 1024},
        {"X-Big": "a" * 17 * 1024},
        {f"X-H{i}": "1" for i in range(101)},
    ],
    ids=["64KiB", "17KiB", "101-headers"],
)
def test_oversized_headers_get_431_and_the_server_stays_healthy(
    guarded: RunningServer, headers: dict[str, str]
) -> None:
    reply = request(guarded.port, "POST", "/v2/models/plain/infer", GOOD, headers)
    assert reply.status == 431 and reply.headers["connection"] == "close"
    assert "headers too large" in reply.json()["error"]  # type: ignore[index]
    assert infer(guarded).status == 200


def _chunked(body: bytes, trailer: bytes, size: int = 1 << 20) -> bytes:
    """A chunked POST of ``body`` in chunks of ``size`` bytes, then ``trailer`` (trailer fields)."""
    chunks = b"".join(chunk(body[i : i + size]) for i in range(0, len(body), size))
    head = b"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + chunks + b"0\r\n" + trailer + b"\r\n"


def test_trailers_are_bounded_like_headers_and_chunk_framing_passes(guarded: RunningServer) -> None:
    """Trailer fields after a chunked body: a few pass (ignored); too many, or too large, get 431
    before they pile up in the parser (a 100 MiB field held the event loop for seconds)."""
    for trailer, size, status in [
        (b"X-Checksum: 1\r\n", 1 << 20, 200),
        (b"", 1, 200),  # one byte a chunk: framing five times the body, still fine
        (b"".join(b"X-T%d: 1\r\n" % i for i in range(150)), 1 << 20, 431),
        (b"X-Big: " + b"a" * (8 << 20) + b"\r\n", 1 << 20, 431),
    ]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
            with contextlib.suppress(OSError):  # the server may close while the trailer is still sent
                sock.sendall(_chunked(GOOD, trailer, size))
            reply = read_reply(sock)
        assert reply.status == status, (len(trailer), reply.body)
        assert time.monotonic() - started < 10
        if status == 431:
            assert "too large" in reply.json()["error"] and reply.headers["connection"] == "close"  # type: ignore[index]
    assert infer(guarded).status == 200


def test_a_request_the_parser_cannot_read_gets_a_json_400(guarded: RunningServer) -> None:
    for raw in (
        b"FOO /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
            sock.sendall(raw)
            reply = read_reply(sock)
        assert reply.status == 400 and reply.headers["content-type"] == "application/json", reply
        assert reply.json() == {"error": "invalid HTTP request"} and reply.headers["connection"] == "close"
    assert infer(guarded).status == 200


def test_headers_under_the_limits_and_large_bodies_in_one_packet_pass(guarded: RunningServer) -> None:
    assert infer(guarded, **{"X-Big": "a" * 15 * 1024}).status == 200
    assert request(guarded.port, "GET", "/v2/health/live", headers={f"X-H{i}": "1" for i in range(90)}).status == 200
    big = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4096, 4], "data": [0.5] * 16384}]})
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        head = f"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n\r\n".encode()
        sock.sendall(head + big)  # headers and a 60 KB body in one write
        assert read_reply(sock).status == 200


# -- logs --------------------------------------------------------------------------------------


def test_the_access_log_names_request_model_version_role_status_and_latency(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="tensorgate.access"),
        serve(repository, access_log=True, strict_readiness=False) as server,
    ):
        assert infer(server, **{"x-request-id": "trace-7"}).status == 200
        generated = infer(server, "/v2/models/plain/versions/9/infer").headers["x-request-id"]
    records = [r.fields for r in caplog.records if r.name == "tensorgate.access"]  # type: ignore[attr-defined]
    first = next(r for r in records if r["request_id"] == "trace-7")
    assert first["model"] == "plain" and first["version"] == "3" and first["role"] == "primary"
    assert first["status"] == 200 and first["latency_ms"] > 0 and first["path"] == "/v2/models/plain/infer"
    missing = next(r for r in records if r["request_id"] == generated)
    assert missing["status"] == 404 and missing["version"] is None
