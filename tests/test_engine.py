"""The engine process with real workers: one load per host, batches across workers, the hop's edge cases.

One CPU engine and two workers (real ``python -m gateway serve`` processes, started with their
host roles as the supervisor starts them: tests/engine_host.py) serve a repository of real
ONNX models. The engine's death has its own host (tests/test_engine_restart.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from gateway.engine.wire import SHM_DIR
from tests.engine_host import Host, engine_host
from tests.onnx_models import IR_VERSION, OPSET, add_sub, gather_lookup, identity, simple_string, write_model
from tests.rawhttp import send_and_leave

#: Long enough that requests sent at once from two workers wait for each other, short enough for CI.
BATCH_DELAY_MS = 400
#: A batch delay long enough that a request sent well after another would still join it.
PATIENT_MS = 3000
#: Tensors above this many bytes go through shared memory in these tests.
SHM_BYTES = 4096


def batch_counter() -> onnx.ModelProto:
    """INPUT0 FP32 [batch, 1] -> OUTPUT0 = INPUT0 + the number of rows in the call (shows the batch size)."""
    one = numpy_helper.from_array(np.ones((1,), dtype=np.float32), "one")
    zero = numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "zero")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["INPUT0", "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "one"], ["ones"]),
            helper.make_node("ReduceSum", ["ones", "axes"], ["rows"], keepdims=1),
            helper.make_node("Add", ["INPUT0", "rows"], ["OUTPUT0"]),
        ],
        "batch_counter",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1])],
        initializer=[one, zero, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """An engine and two workers over models that batch, don't batch, and carry big tensors."""
    root = tmp_path_factory.mktemp("engine-repo")
    write_model(root, "simple", 1, add_sub(), 'placement = "engine"\n')
    write_model(root, "local", 1, add_sub())  # no placement: in each worker
    engine = 'placement = "engine"\n'  # a CPU version's default is each worker
    counter = engine + f"max_batch_size = 8\n[batching]\nmax_queue_delay_ms = {BATCH_DELAY_MS}\npriority_levels = 2\n"
    write_model(root, "counter", 1, batch_counter(), counter)
    patient = engine + f"max_batch_size = 8\n[batching]\nmax_queue_delay_ms = {PATIENT_MS}\n"
    write_model(root, "patient", 1, batch_counter(), patient)
    write_model(root, "big", 1, identity("FP32", ["batch", 2048]), engine + "max_batch_size = 4\n")
    write_model(root, "lookup", 1, gather_lookup(), engine + "max_batch_size = 8\n")
    write_model(root, "strings", 1, simple_string(), 'placement = "engine"\n')
    previous = os.environ.get("TENSORGATE_ENGINE_SHM_BYTES")
    os.environ["TENSORGATE_ENGINE_SHM_BYTES"] = str(SHM_BYTES)
    try:
        with engine_host(root, workers=2) as running:
            yield running
    finally:
        if previous is None:
            del os.environ["TENSORGATE_ENGINE_SHM_BYTES"]
        else:
            os.environ["TENSORGATE_ENGINE_SHM_BYTES"] = previous


SIMPLE = {
    "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
    ]
}


def post(url: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, Any]]:
    """POST a JSON body; the status and the JSON answer."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def counter_body(value: float = 0.0, **parameters: Any) -> dict[str, Any]:
    """One row for the batch counter."""
    body: dict[str, Any] = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [value]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def test_each_version_loads_once_in_the_engine_for_both_workers(host: Host) -> None:
    engine = host.log("engine-cpu")
    for model in ("simple", "counter", "patient", "big", "lookup"):
        assert engine.count(f"model {model!r} version 1 READY") == 1, engine
        for index in range(2):
            assert f"model {model!r} version 1 READY" in host.log(f"worker-{index}")
            assert "in the cpu engine" in host.log(f"worker-{index}")
    # Without batching or a placement, a version stays in each worker (no hop).
    assert "model 'local' version 1" not in engine
    for index in range(2):
        assert "model 'local' version 1 READY on CPUExecutionProvider" in host.log(f"worker-{index}")
        status, body = post(host.url(index) + "/v2/models/local/infer", SIMPLE)
        assert status == 200 and body["outputs"][0]["data"][:2] == [1, 2]


def test_inference_through_the_engine_json_and_binary(host: Host) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    for index in range(2):
        client = httpclient.InferenceServerClient(host.url(index).removeprefix("http://"))
        for binary in (False, True):
            inputs = [
                httpclient.InferInput("INPUT0", [1, 16], "INT32"),
                httpclient.InferInput("INPUT1", [1, 16], "INT32"),
            ]
            inputs[0].set_data_from_numpy(a, binary_data=binary)
            inputs[1].set_data_from_numpy(b, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
            result = client.infer("simple", inputs, outputs=outputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        metadata = client.get_model_metadata("simple")
        assert metadata["platform"] == "onnxruntime_onnx"
        client.close()


def test_batches_form_from_both_workers_requests(host: Host) -> None:
    # One request per worker, sent together: the engine's batcher waits BATCH_DELAY_MS for more
    # rows, so both land in one call of two rows (OUTPUT0 = 0 + 2 rows).
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(post, host.url(i) + "/v2/models/counter/infer", counter_body()) for i in range(2)]
        answers = [f.result() for f in futures]
    assert [status for status, _ in answers] == [200, 200], answers
    assert [body["outputs"][0]["data"] for _, body in answers] == [[2.0], [2.0]]


def test_priority_and_timeout_reach_the_engines_batcher(host: Host) -> None:
    url = host.url(0) + "/v2/models/counter/infer"
    status, body = post(url, counter_body(priority=1))
    assert status == 200 and body["outputs"][0]["data"] == [1.0]
    status, body = post(url, counter_body(priority=3))  # two levels: validated by the worker
    assert status == 400 and "priority" in body["error"]
    # Waiting for a batch takes BATCH_DELAY_MS; a 50 ms deadline expires in the engine's queue.
    started = time.monotonic()
    status, body = post(url, counter_body(timeout=50_000))
    assert status == 504, body
    assert "deadline" in body["error"]
    assert time.monotonic() - started < BATCH_DELAY_MS / 1e3 + 5


def test_a_client_that_leaves_is_withdrawn_from_the_engines_queue(host: Host) -> None:
    # The first request's client leaves while it waits PATIENT_MS for a batch; the engine
    # withdraws it, so the second request, sent well within that wait, is a batch of one.
    body = json.dumps(counter_body()).encode()
    leaver = threading.Thread(target=send_and_leave, args=(host.ports[0], "/v2/models/patient/infer", body, 0.1))
    leaver.start()
    leaver.join(timeout=10)
    time.sleep(0.3)  # the worker tells the engine within its 50 ms check
    status, body = post(host.url(1) + "/v2/models/patient/infer", counter_body())
    assert status == 200
    assert body["outputs"][0]["data"] == [1.0]


def _shared_files() -> set[str]:
    return {p.name for p in SHM_DIR.glob("*-tensor-*")} if SHM_DIR.is_dir() else set()


def test_large_tensors_travel_through_shared_memory(host: Host) -> None:
    before = _shared_files()
    client = httpclient.InferenceServerClient(host.url(1).removeprefix("http://"))
    data = np.random.default_rng(3).random((3, 2048), dtype=np.float32)  # 24 KiB > SHM_BYTES
    tensor = httpclient.InferInput("INPUT0", [3, 2048], "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    result = client.infer("big", [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    client.close()
    assert _shared_files() - before == set()  # every file was unlinked by its reader


def test_bytes_tensors_cross_the_hop(host: Host) -> None:
    strings = {
        "inputs": [
            {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": [str(i) for i in range(16)]},
            {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 16], "data": ["1"] * 16},
        ]
    }
    status, body = post(host.url(0) + "/v2/models/strings/infer", strings)
    assert status == 200, body
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    assert outputs["OUTPUT0"] == [str(i + 1) for i in range(16)]
    assert outputs["OUTPUT1"] == [str(i - 1) for i in range(16)]


def test_bad_input_is_still_a_400(host: Host) -> None:
    url = host.url(0) + "/v2/models/simple/infer"
    wrong_shape = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]}]}
    status, body = post(url, wrong_shape)
    assert status == 400 and "shape" in body["error"]
    # Valid by shape, refused by the model in the engine (an index outside the table).
    outside = {"inputs": [{"name": "INPUT0", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 99]}]}
    status, body = post(host.url(1) + "/v2/models/lookup/infer", outside)
    assert status == 400, body
    assert set(body) == {"error"}
    inside = {"inputs": [{"name": "INPUT0", "datatype": "INT64", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
    status, body = post(host.url(1) + "/v2/models/lookup/infer", inside)
    assert status == 200 and body["outputs"][0]["data"] == [0.0, 0.5, 1.0, 1.5]


def test_placement_is_parsed_and_checked() -> None:
    from gateway.config_error import ConfigError
    from gateway.registry.config import parse_model_config

    assert parse_model_config({}, "m/config.toml").where == "worker"  # measured: the hop costs more
    assert parse_model_config({"max_batch_size": 8}, "m/config.toml").where == "worker"  # batched too
    assert parse_model_config({"placement": "worker", "max_batch_size": 8}, "m/config.toml").where == "worker"
    assert parse_model_config({"placement": "engine"}, "m/config.toml").where == "engine"
    with pytest.raises(ConfigError, match="placement"):
        parse_model_config({"placement": "gpu"}, "m/config.toml")


def test_workers_place_versions_on_the_engines_the_supervisor_started(tmp_path: Any) -> None:
    """The supervisor's engine list reaches the workers; a GPU version with no engine fails at once."""
    from gateway.engine.placement import Engines
    from gateway.host.roles import HostRole
    from gateway.registry.config import parse_model_config
    from runtimes.base import RuntimeLoadError
    from runtimes.devices import Devices

    role = HostRole.from_env(HostRole("worker-0", tmp_path, 2, engines=("cpu", "cuda0")).environ())
    assert role is not None and role.engines == ("cpu", "cuda0")
    gpu = parse_model_config({"onnx": {"device": "cuda:0"}}, "m/config.toml")
    on_engine = parse_model_config({"placement": "engine", "onnx": {"device": "cpu"}}, "m/config.toml")
    # This worker's own probe sees a GPU, but the supervisor started no engine for it: the
    # version must not wait for an engine that never comes, nor load in every worker.
    cpu_only = Engines(HostRole("worker-0", tmp_path, 2, engines=("cpu",)), Devices(1, False))
    with pytest.raises(RuntimeLoadError, match=r"no engine for cuda0 \(engines: cpu\)"):
        cpu_only.placing(gpu)
    assert cpu_only.placing(on_engine) is cpu_only.clients["cpu"]
    in_worker = parse_model_config({"onnx": {"device": "cpu"}}, "m/config.toml")
    assert cpu_only.placing(in_worker) is None  # a CPU version's default: in each worker
    with_gpu = Engines(role, Devices(1, False))
    assert with_gpu.placing(gpu) is with_gpu.clients["cuda0"]


def test_the_supervisor_counts_gpus_with_the_workers_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import asyncio
    import subprocess
    import sys

    from gateway.host import supervisor

    done = subprocess.run([sys.executable, "-m", "runtimes.devices"], capture_output=True, text=True, check=True)
    assert done.stdout == "0\n"  # this machine: no CUDA device
    assert asyncio.run(supervisor.gpu_devices()) == []
    fake = tmp_path / "python"  # an interpreter whose probe finds two devices
    fake.write_text("#!/bin/sh\necho 'a library says hello'\necho 2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(supervisor.sys, "executable", str(fake))
    assert asyncio.run(supervisor.gpu_devices()) == ["cuda0", "cuda1"]
    fake.write_text("#!/bin/sh\necho 'ImportError: no onnxruntime' >&2\nexit 1\n")
    assert asyncio.run(supervisor.gpu_devices()) == []  # a failing probe: the CPU engine only
