"""The remote Triton runtime against a real Triton server (PyTriton, on the CPU).

The gateway serves a model whose version 1 runs here on ONNX Runtime and whose version 2 runs
on Triton, plus Triton-only models over HTTP and gRPC, a slow one and a failing one. Answers are
compared with Triton's own, called directly with tritonclient.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from gateway.config_error import ConfigError
from gateway.registry.config import parse_model_config
from tests.onnx_models import sigmoid_scorer, write_model
from tests.rawhttp import Reply, request
from tests.server import RunningServer, admin, prediction_log, serve, wait_for
from tests.tls_proxy import TlsProxy, make_certificates
from tests.triton_server import TritonServer, scorer_weights

JSON = {"Content-Type": "application/json"}


def remote(url: str, model: str, extra: str = "", top: str = "") -> str:
    """A config.toml that serves ``model`` from the Triton server at ``url``."""
    return f'runtime = "triton"\n{top}[triton]\nurl = "{url}"\nmodel = "{model}"\nversion = "1"\n{extra}'


def add_remote_version(root: Path, name: str, version: int, config: str, model_config: str | None = None) -> None:
    """A version directory with only a config.toml: the version runs on Triton."""
    directory = root / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(config)
    if model_config is not None:
        (root / name / "config.toml").write_text(model_config)


def expected_scores(features: np.ndarray) -> np.ndarray:
    weights = scorer_weights()
    logits = features @ weights[:16].reshape(16, 1) + weights[16]
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def infer_json(port: int, path: str, data: list[list[float]], parameters: dict[str, object] | None = None) -> Reply:
    doc: dict[str, object] = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [len(data), 16], "data": data}]
    }
    if parameters:
        doc["parameters"] = parameters
    return request(port, "POST", path, orjson.dumps(doc), JSON, timeout_s=30)


def sleepy_body(seconds: float, timeout_us: int = 0) -> bytes:
    doc: dict[str, object] = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [seconds]}]}
    if timeout_us:
        doc["parameters"] = {"timeout": timeout_us}
    return orjson.dumps(doc)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with TritonServer(tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    # scorer: version 1 on ONNX Runtime here, version 2 on Triton; both loaded, 2 serves.
    write_model(root, "scorer", 1, sigmoid_scorer(scorer_weights()), config='version_policy = "all"\n')
    add_remote_version(root, "scorer", 2, remote(triton.http_url, "scorer"))
    # Triton-only models: the version directories hold nothing, the model's config.toml says where.
    for name, url, model, extra, top in [
        ("scorer_grpc", triton.grpc_url, "scorer", "", ""),
        ("sleepy", triton.http_url, "sleepy", "timeout_s = 1.0\nretries = 0\nbreaker_failures = 0\n", ""),
        ("broken", triton.http_url, "broken", "retries = 0\nbreaker_failures = 0\n", ""),
        ("batched", triton.http_url, "scorer", "", "max_batch_size = 16\n[batching]\nmax_queue_delay_ms = 2\n"),
        ("spare", triton.http_url, "scorer", "", 'version_policy = "all"\n'),
    ]:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.toml").write_text(remote(url, model, extra, top))
    (root / "spare" / "2").mkdir()
    # No version directory at all: the model has the remote's version.
    (root / "bare").mkdir()
    (root / "bare" / "config.toml").write_text(remote(triton.http_url, "scorer"))
    with serve(root) as running:
        yield running


def test_metadata_is_read_from_the_remote_server(gateway: RunningServer) -> None:
    doc = request(gateway.port, "GET", "/v2/models/scorer/versions/2").json()
    assert doc["platform"] == "python"  # type: ignore[index]  # PyTriton's backend, as Triton reports it
    assert doc["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]  # type: ignore[index]
    assert doc["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]  # type: ignore[index]
    parameters = doc["parameters"]  # type: ignore[index]
    assert parameters == {"version": "2", "state": "READY", "provider": "triton-http"}  # public: nothing more
    described = {m["name"]: m for m in admin(gateway, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    remote = described["scorer"]["versions"]["2"]
    assert remote["circuit"] == "closed" and remote["remote_ready"] is True and "sha256" not in remote
    grpc = request(gateway.port, "GET", "/v2/models/scorer_grpc").json()
    assert grpc["parameters"]["provider"] == "triton-grpc"  # type: ignore[index]
    assert grpc["inputs"] == doc["inputs"]  # type: ignore[index]
    assert request(gateway.port, "GET", "/v2/models/scorer/versions/2/ready").status == 200
    # Nothing in public metadata names the remote server.
    assert "127.0.0.1" not in str(doc) and "127.0.0.1" not in str(grpc)


def test_answers_through_the_gateway_equal_tritons_own(gateway: RunningServer, triton: TritonServer) -> None:
    features = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    direct = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    through = httpclient.InferenceServerClient(gateway.host)
    try:
        tensor = httpclient.InferInput("features", [5, 16], "FP32")
        tensor.set_data_from_numpy(features, binary_data=True)
        wanted = [httpclient.InferRequestedOutput("score", binary_data=True)]
        truth = direct.infer("scorer", [tensor], outputs=wanted).as_numpy("score")
        result = through.infer("scorer", [tensor], model_version="2", outputs=wanted)
        assert result.get_response()["model_version"] == "2"
        np.testing.assert_array_equal(result.as_numpy("score"), truth)
        # The same tensors over gRPC, and the local ONNX Runtime version, agree too.
        grpc = through.infer("scorer_grpc", [tensor], outputs=wanted).as_numpy("score")
        np.testing.assert_array_equal(grpc, truth)
        local = through.infer("scorer", [tensor], model_version="1", outputs=wanted).as_numpy("score")
        np.testing.assert_allclose(local, truth, rtol=1e-5)
        np.testing.assert_allclose(truth, expected_scores(features), rtol=1e-5)
    finally:
        direct.close()
        through.close()
    # JSON in and out as well.
    reply = infer_json(gateway.port, "/v2/models/scorer/infer", features[:2].tolist())
    assert reply.status == 200 and reply.headers["x-model-version"] == "2"
    data = reply.json()["outputs"][0]["data"]
    np.testing.assert_allclose(data, expected_scores(features[:2]).ravel(), rtol=1e-5)


def test_canary_between_onnx_runtime_and_triton(gateway: RunningServer) -> None:
    route = {"weights": {"2": 50, "1": 50}, "reason": "canary onto Triton"}
    assert admin(gateway, "PUT", "/admin/models/scorer/route", route).status == 200
    try:
        rng = np.random.default_rng(2)
        rows = [rng.normal(size=(1, 16)).astype(np.float32) for _ in range(120)]

        def one(row: np.ndarray) -> tuple[str, list[float]]:
            reply = infer_json(gateway.port, "/v2/models/scorer/infer", row.tolist())
            assert reply.status == 200, reply.body
            return reply.headers["x-model-version"], reply.json()["outputs"][0]["data"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, rows))
    finally:
        assert admin(gateway, "PUT", "/admin/models/scorer/route", {"weights": {"2": 100}}).status == 200
    served = Counter(version for version, _ in answers)
    assert served["1"] > 20 and served["2"] > 20 and set(served) == {"1", "2"}
    for row, (_, data) in zip(rows, answers, strict=True):
        np.testing.assert_allclose(data, expected_scores(row).ravel(), rtol=1e-5)
    # Both runtimes' answers are in the prediction log, each with its version and role.
    log_dir = gateway.settings.log_dir
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [r for r in prediction_log(log_dir) if r["model"] == "scorer"]
        roles = {(r["version"], r["role"]) for r in records}
        if {("1", "canary"), ("2", "primary")} <= roles or {("2", "canary"), ("1", "primary")} <= roles:
            break
        time.sleep(0.1)
    assert {r["version"] for r in records} >= {"1", "2"}
    assert all(r["status"] == 200 for r in records)


def test_a_slow_remote_gets_504_at_the_deadline(gateway: RunningServer) -> None:
    started = time.monotonic()
    reply = request(gateway.port, "POST", "/v2/models/sleepy/infer", sleepy_body(1.5, timeout_us=300_000), JSON)
    elapsed = time.monotonic() - started
    assert reply.status == 504 and "deadline" in reply.json()["error"]  # type: ignore[index]
    assert 0.25 < elapsed < 1.5
    # Without a deadline of its own, the request gets the model's (timeout_s = 1.0).
    started = time.monotonic()
    reply = request(gateway.port, "POST", "/v2/models/sleepy/infer", sleepy_body(1.5), JSON)
    assert reply.status == 504 and 0.9 < time.monotonic() - started < 2.5
    assert "127.0.0.1" not in reply.body.decode()
    # Triton finishes the abandoned calls (a Python model cannot be interrupted); then fast
    # calls get through again.
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and statuses[-1:] != [200]:
        statuses.append(request(gateway.port, "POST", "/v2/models/sleepy/infer", sleepy_body(0.01), JSON).status)
    assert statuses[-1] == 200 and set(statuses) <= {200, 504}


def test_a_remote_5xx_is_a_502_without_its_details(gateway: RunningServer, triton: TritonServer) -> None:
    body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})
    for _ in range(3):
        reply = request(gateway.port, "POST", "/v2/models/broken/infer", body, JSON)
        assert reply.status == 502
        message = reply.json()["error"]  # type: ignore[index]
        assert message == "the remote Triton server failed (status 500)"
        for secret in ("127.0.0.1", str(triton.http_port), "Traceback", "broken on purpose"):
            assert secret not in reply.body.decode()
    # breaker_failures = 0: the circuit never opens for this model.
    assert request(gateway.port, "GET", "/v2/models/broken/ready").status == 200
    assert request(gateway.port, "GET", "/v2/health/live").status == 200


def test_a_model_that_only_names_its_triton_server(gateway: RunningServer) -> None:
    reply = infer_json(gateway.port, "/v2/models/bare/infer", [[0.25] * 16])
    assert reply.status == 200 and reply.headers["x-model-version"] == "1"
    np.testing.assert_allclose(
        reply.json()["outputs"][0]["data"], expected_scores(np.full((1, 16), 0.25)).ravel(), rtol=1e-5
    )  # type: ignore[index]


def test_bad_input_is_refused_before_the_remote(gateway: RunningServer) -> None:
    reply = infer_json(gateway.port, "/v2/models/scorer/versions/2/infer", [[1.0] * 15])
    assert reply.status == 400 and "features" in reply.json()["error"]  # type: ignore[index]


def test_a_remote_4xx_is_a_400_with_a_fixed_message(gateway: RunningServer) -> None:
    # Valid by the metadata ([-1, 16]) but over Triton's max_batch_size (64): Triton answers 400
    # with its own text (the model's name, its limits); the client gets a fixed message and the status.
    reply = infer_json(gateway.port, "/v2/models/scorer/versions/2/infer", [[0.5] * 16] * 65)
    assert reply.status == 400, reply.body
    assert reply.json() == {"error": "the remote model refused the input (status 400)"}
    reply = infer_json(gateway.port, "/v2/models/scorer_grpc/infer", [[0.5] * 16] * 65)
    assert reply.json() == {"error": "the remote model refused the input (status INVALID_ARGUMENT)"}
    assert infer_json(gateway.port, "/v2/models/scorer/versions/2/infer", [[0.5] * 16] * 64).status == 200


def test_gateway_side_batching_in_front_of_triton(gateway: RunningServer) -> None:
    rng = np.random.default_rng(3)
    rows = [rng.normal(size=(1, 16)).astype(np.float32) for _ in range(64)]

    def one(row: np.ndarray) -> list[float]:
        reply = infer_json(gateway.port, "/v2/models/batched/infer", row.tolist())
        assert reply.status == 200, reply.body
        return reply.json()["outputs"][0]["data"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, rows))
    for row, data in zip(rows, answers, strict=True):
        np.testing.assert_allclose(data, expected_scores(row).ravel(), rtol=1e-5)
    stats = request(gateway.port, "GET", "/v2/models/batched/stats").json()
    model_stats = stats["model_stats"][0]  # type: ignore[index]
    assert model_stats["execution_count"] <= model_stats["inference_count"] == 64


def test_unloading_a_version_leaves_the_remote_model_loaded(gateway: RunningServer, triton: TritonServer) -> None:
    assert admin(gateway, "POST", "/admin/models/spare/versions/1/unload").status == 200
    assert request(gateway.port, "GET", "/v2/models/spare/versions/1/ready").status == 404
    assert triton.model_ready("scorer")
    assert admin(gateway, "POST", "/admin/models/spare/versions/1/load").status == 200
    assert request(gateway.port, "GET", "/v2/models/spare/versions/1/ready").status == 200


def test_metrics_show_the_remote_versions(gateway: RunningServer) -> None:
    text = request(gateway.port, "GET", "/metrics").body.decode()
    assert 'tensorgate_remote_circuit_open{model="scorer",version="2"} 0.0' in text
    assert 'tensorgate_remote_ready{model="scorer",version="2"} 1.0' in text
    assert 'tensorgate_remote_retries_total{model="scorer",version="2"}' in text
    assert 'tensorgate_remote_circuit_open{model="scorer",version="1"}' not in text  # local


def test_a_missing_remote_model_fails_its_load_clearly(triton: TritonServer, tmp_path: Path) -> None:
    (tmp_path / "ghost" / "1").mkdir(parents=True)
    (tmp_path / "ghost" / "config.toml").write_text(remote(triton.http_url, "nope"))
    (tmp_path / "down" / "1").mkdir(parents=True)
    (tmp_path / "down" / "config.toml").write_text(remote("http://127.0.0.1:9", "scorer"))
    with serve(tmp_path, ready=False) as gateway:
        wait_for(gateway.url + "/v2/health/live")
        reply = admin(gateway, "POST", "/admin/models/ghost/versions/1/load")
        assert reply.status == 502
        message = reply.json()["error"]  # type: ignore[index]
        assert "not ready on the Triton server" in message and "127.0.0.1" not in message
        reply = admin(gateway, "POST", "/admin/models/down/versions/1/load")
        assert reply.status == 502 and "cannot be reached (connection refused)" in reply.json()["error"]  # type: ignore[index]
        assert "127.0.0.1" not in reply.body.decode()
        text = request(gateway.port, "GET", "/metrics").body.decode()
        assert 'tensorgate_model_load_failures_total{model="ghost",reason="remote"}' in text


def test_remote_killed_502s_then_the_breaker_then_recovery(tmp_path: Path) -> None:
    triton = TritonServer(tmp_path)
    triton.start()
    try:
        root = tmp_path / "models"
        (root / "scorer" / "1").mkdir(parents=True)
        extra = "retries = 0\nbreaker_failures = 3\nbreaker_reset_s = 1.0\nhealth_interval_s = 0.5\n"
        (root / "scorer" / "config.toml").write_text(remote(triton.http_url, "scorer", extra))
        row = [[0.5] * 16]
        with serve(root) as gateway:
            assert infer_json(gateway.port, "/v2/models/scorer/infer", row).status == 200
            triton.kill()
            for _ in range(3):
                reply = infer_json(gateway.port, "/v2/models/scorer/infer", row)
                assert reply.status == 502, reply.body
                # A pooled connection is reset, then new ones are refused.
                assert reply.json()["error"] in (
                    "the remote Triton server failed: connection closed by the server",
                    "the remote Triton server failed: connection refused",
                )
                assert "127.0.0.1" not in reply.body.decode()
            # The circuit is open: refused at once, without trying the remote.
            started = time.monotonic()
            reply = infer_json(gateway.port, "/v2/models/scorer/infer", row)
            assert reply.status == 503 and time.monotonic() - started < 0.2
            assert "circuit is open" in reply.json()["error"]
            assert int(reply.headers["retry-after"]) >= 1
            assert request(gateway.port, "GET", "/v2/models/scorer/ready").status == 503
            text = request(gateway.port, "GET", "/metrics").body.decode()
            assert 'tensorgate_remote_circuit_open{model="scorer",version="1"} 1.0' in text
            # The server stays live and ready: a remote outage must not pull every gateway pod.
            assert request(gateway.port, "GET", "/v2/health/ready").status == 200

            triton.start()  # same ports
            deadline = time.monotonic() + 30
            statuses = []
            while time.monotonic() < deadline:
                status = infer_json(gateway.port, "/v2/models/scorer/infer", row).status
                statuses.append(status)
                if status == 200:
                    break
                time.sleep(0.2)
            assert statuses[-1] == 200 and set(statuses) <= {200, 502, 503}
            described = {m["name"]: m for m in admin(gateway, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
            assert described["scorer"]["versions"]["1"]["circuit"] == "closed"
            wait_for(gateway.url + "/v2/models/scorer/ready", timeout_s=10)
    finally:
        triton.stop()


def test_retries_stay_within_their_count(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "scorer" / "1").mkdir(parents=True)
    triton = TritonServer(tmp_path)
    triton.start()
    try:
        extra = "retries = 2\nbreaker_failures = 0\n"
        (root / "scorer" / "config.toml").write_text(remote(triton.http_url, "scorer", extra))
        with serve(root) as gateway:
            triton.kill()
            for _ in range(4):
                assert infer_json(gateway.port, "/v2/models/scorer/infer", [[0.0] * 16]).status == 502
            text = request(gateway.port, "GET", "/metrics").body.decode()
            assert 'tensorgate_remote_retries_total{model="scorer",version="1"} 8.0' in text
    finally:
        triton.stop()


def test_load_remote_asks_triton_to_load_and_unload_remote_unloads(tmp_path: Path) -> None:
    # Triton's own server in explicit model-control mode: lazy_scorer is in its repository, not loaded.
    (tmp_path / "triton").mkdir()
    triton = TritonServer(tmp_path / "triton", explicit=True)
    triton.start()
    try:
        root = tmp_path / "models"
        for version in (1, 2):
            (root / "lazy" / str(version)).mkdir(parents=True)
        extra = "load_remote = true\nunload_remote = true\n"
        (root / "lazy" / "config.toml").write_text(
            remote(triton.http_url, "lazy_scorer", extra, 'version_policy = "all"\n')
        )
        with serve(root, ready=False) as gateway:
            wait_for(gateway.url + "/v2/models/lazy/versions/2/ready")
            # Loading asked Triton to load the model, and its metadata came back.
            assert triton.model_ready("lazy_scorer")
            doc = request(gateway.port, "GET", "/v2/models/lazy").json()
            assert doc["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]  # type: ignore[index]
            # Unloading a version here unloads the remote model too (unload_remote = true).
            assert admin(gateway, "POST", "/admin/models/lazy/versions/1/unload").status == 200
            deadline = time.monotonic() + 30
            while triton.model_ready("lazy_scorer") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not triton.model_ready("lazy_scorer")
        # Without load_remote, a model Triton has not loaded fails to load here, saying how to fix it.
        plain = tmp_path / "plain"
        (plain / "plain" / "1").mkdir(parents=True)
        (plain / "plain" / "config.toml").write_text(remote(triton.http_url, "lazy_scorer"))
        with serve(plain, ready=False) as gateway:
            reply = admin(gateway, "POST", "/admin/models/plain/versions/1/load")
            assert reply.status == 502 and "set triton.load_remote = true" in reply.json()["error"]  # type: ignore[index]
    finally:
        triton.stop()


# -- start-up before Triton: retried until the remote model is ready -----------------------------


def admin_version(gateway: RunningServer, model: str, version: str) -> dict[str, object] | None:
    described = {m["name"]: m for m in admin(gateway, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    found: dict[str, object] | None = described[model]["versions"].get(version)
    return found


def test_a_gateway_started_before_triton_waits_for_its_models(tmp_path: Path) -> None:
    (tmp_path / "triton").mkdir()
    triton = TritonServer(tmp_path / "triton")  # its ports are chosen; it starts later
    root = tmp_path / "models"
    extra = "load_retry_max_s = 1.0\nhealth_interval_s = 0.5\n"
    (root / "scorer" / "1").mkdir(parents=True)
    (root / "scorer" / "config.toml").write_text(remote(triton.http_url, "scorer", extra))
    # spare: version 2 here on ONNX Runtime (it serves), version 1 a remote model that never comes.
    write_model(root, "spare", 2, sigmoid_scorer(scorer_weights()), config='version_policy = "all"\n')
    add_remote_version(root, "spare", 1, remote(triton.http_url, "nope", extra))
    try:
        with serve(root, ready=False) as gateway:
            deadline = time.monotonic() + 30
            while (admin_version(gateway, "scorer", "1") or {}).get("error") is None:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            status = admin_version(gateway, "scorer", "1")
            assert status is not None and status["state"] == "LOADING"
            assert "cannot be reached (connection refused)" in str(status["error"])
            assert request(gateway.port, "GET", "/v2/health/ready").status == 503
            reply = infer_json(gateway.port, "/v2/models/scorer/infer", [[0.5] * 16])
            assert reply.status == 503 and "loading" in reply.json()["error"]  # type: ignore[index]
            # An operator's load makes an attempt now and answers its outcome; retrying goes on.
            reply = admin(gateway, "POST", "/admin/models/scorer/versions/1/load")
            assert reply.status == 502 and "127.0.0.1" not in reply.body.decode()
            # A version being retried can be unloaded: its retries stop.
            assert (admin_version(gateway, "spare", "1") or {}).get("state") == "LOADING"
            assert admin(gateway, "POST", "/admin/models/spare/versions/1/unload").status == 200

            triton.start()
            wait_for(gateway.url + "/v2/health/ready", timeout_s=60)
            reply = infer_json(gateway.port, "/v2/models/scorer/infer", [[0.5] * 16])
            assert reply.status == 200, reply.body
            np.testing.assert_allclose(
                reply.json()["outputs"][0]["data"], expected_scores(np.full((1, 16), 0.5)).ravel(), rtol=1e-5
            )  # type: ignore[index]
            assert admin_version(gateway, "scorer", "1") == {
                "state": "READY", "provider": "triton-http", "remote_ready": True, "circuit": "closed"
            }  # fmt: skip
            time.sleep(1.5)  # a few retry periods: the unloaded version stays unloaded
            assert admin_version(gateway, "spare", "1") is None
            text = request(gateway.port, "GET", "/metrics").body.decode()
            assert 'tensorgate_model_load_failures_total{model="scorer",reason="remote"} 1.0' in text
    finally:
        triton.stop()


def test_load_retry_max_s_zero_fails_at_once(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "down" / "1").mkdir(parents=True)
    (root / "down" / "config.toml").write_text(remote("http://127.0.0.1:9", "scorer", "load_retry_max_s = 0\n"))
    with serve(root, ready=False) as gateway:
        deadline = time.monotonic() + 30
        while (admin_version(gateway, "down", "1") or {}).get("state") != "FAILED":
            assert time.monotonic() < deadline
            time.sleep(0.1)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "https://t:8000"\nca_file = "ca.pem"\n', "ca_file: must be an absolute path"),
        ('url = "http://t:8000"\nca_file = "/ca.pem"\n', "need an https:// or grpcs:// url"),
        ('url = "grpcs://t:8001"\ncert_file = "/c.pem"\n', "needs both cert_file and key_file"),
        ('url = "ftp://t:21"\n', "triton.url: invalid value"),
        ('url = "https://t:8000"\nload_retry_max_s = -1\n', "load_retry_max_s: must be a finite number >= 0"),
    ],
)
def test_triton_tls_settings_are_checked(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_model_config(tomllib.loads(f'runtime = "triton"\n[triton]\n{table}'), "m/config.toml")


def test_triton_tls_settings_parse() -> None:
    table = 'url = "grpcs://t:8001"\nca_file = "/ca.pem"\ncert_file = "/c.pem"\nkey_file = "/c.key"\n'
    options = parse_model_config(tomllib.loads(f'runtime = "triton"\n[triton]\n{table}'), "m").triton
    assert (options.url, options.ca_file, options.cert_file, options.key_file) == (
        "grpcs://t:8001", "/ca.pem", "/c.pem", "/c.key"
    )  # fmt: skip
    assert options.load_retry_max_s == 30.0


def test_tls_to_triton_with_a_client_certificate(triton: TritonServer, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "pki")
    with (
        TlsProxy(triton.http_port, certs, alpn="http/1.1", client_ca=certs.ca) as https,
        TlsProxy(triton.grpc_port, certs, alpn="h2", client_ca=certs.ca) as grpcs,
    ):
        client = f'ca_file = "{certs.ca}"\ncert_file = "{certs.client_cert}"\nkey_file = "{certs.client_key}"\n'
        root = tmp_path / "models"
        quick = "load_retry_max_s = 0\n"
        for name, url, extra in [
            ("secure", f"https://127.0.0.1:{https.port}", client),
            ("secure_grpc", f"grpcs://127.0.0.1:{grpcs.port}", client),
            ("no_client_cert", f"https://127.0.0.1:{https.port}", f'ca_file = "{certs.ca}"\n{quick}'),
            ("untrusted", f"https://127.0.0.1:{https.port}", f'ca_file = "{certs.other_ca}"\n{quick}'),
            ("plain_to_tls", f"http://127.0.0.1:{https.port}", quick),
        ]:
            (root / name / "1").mkdir(parents=True)
            (root / name / "config.toml").write_text(remote(url, "scorer", extra))
        with serve(root, ready=False) as gateway:
            for name, provider in (("secure", "triton-http"), ("secure_grpc", "triton-grpc")):
                wait_for(f"{gateway.url}/v2/models/{name}/ready", timeout_s=60)
                reply = infer_json(gateway.port, f"/v2/models/{name}/infer", [[0.25] * 16] * 3)
                assert reply.status == 200, reply.body
                np.testing.assert_allclose(
                    reply.json()["outputs"][0]["data"], expected_scores(np.full((3, 16), 0.25)).ravel(), rtol=1e-5
                )  # type: ignore[index]
                assert request(gateway.port, "GET", f"/v2/models/{name}").json()["parameters"]["provider"] == provider  # type: ignore[index]
            for name in ("no_client_cert", "untrusted", "plain_to_tls"):
                reply = admin(gateway, "POST", f"/admin/models/{name}/versions/1/load")
                assert reply.status == 502, (name, reply.body)
                assert "127.0.0.1" not in reply.body.decode() and str(https.port) not in reply.body.decode()
            assert "TLS handshake failed" in str(admin_version(gateway, "untrusted", "1") or {})
