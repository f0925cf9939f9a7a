"""Warm-up: synthetic data never fails a good model, a version's own samples must pass, and the
cost model that decides what runs on the event loop (learned from real calls when need be,
and capped by element count whatever it predicts)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtimes.base import TensorSpec
from runtimes.devices import Devices
from runtimes.executor import INLINE_MAX_ELEMENTS, Executor
from runtimes.onnxrt import OnnxOptions, OnnxRuntime
from runtimes.warmup import SEED_CALLS, CostModel, fit, unmeasured
from tests.onnx_models import identity, simple_string, write_model
from tests.rawhttp import request
from tests.server import RunningServer, admin, serve


def string_request(a: list[int], b: list[int]) -> dict[str, Any]:
    """A V2 request for simple_string: two [1, 16] BYTES tensors of decimal strings."""
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": [str(v) for v in a]},
            {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 16], "data": [str(v) for v in b]},
        ]
    }


def with_samples(root: Path, name: str, samples: dict[str, bytes]) -> None:
    write_model(root, name, 1, simple_string(), config="max_batch_size = 8\n")
    folder = root / name / "1" / "warmup"
    folder.mkdir()
    for file_name, content in samples.items():
        (folder / file_name).write_bytes(content)


JSON = {"Content-Type": "application/json"}
GOOD = orjson.dumps(string_request(list(range(16)), [1] * 16))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warmup")
    write_model(root, "synthetic_fails", 1, simple_string(), config="max_batch_size = 8\n")
    write_model(root, "synthetic_works", 1, identity("FP32"))
    with_samples(root, "own_samples", {"a.json": GOOD, "b.json": orjson.dumps(string_request([7] * 16, [-7] * 16))})
    with_samples(root, "refused_sample", {"a.json": GOOD, "b.json": orjson.dumps(string_request([1] * 16, [2] * 16))})
    # The model cannot parse "x": ONNX Runtime throws, as it does on synthetic "" data.
    refused = string_request([1] * 16, [2] * 16)
    refused["inputs"][1]["data"][3] = "x"
    (root / "refused_sample" / "1" / "warmup" / "b.json").write_bytes(orjson.dumps(refused))
    with_samples(
        root, "invalid_sample", {"a.json": orjson.dumps({"inputs": string_request([1] * 16, [1] * 16)["inputs"][:1]})}
    )
    with_samples(root, "npz_sample", {"a.npz": b"PK"})
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, ready=False) as running:
        deadline = time.monotonic() + 60
        while any(v["state"] == "LOADING" for v in versions(running).values()) or len(versions(running)) < 6:
            assert time.monotonic() < deadline, versions(running)
            time.sleep(0.05)
        yield running


def versions(server: RunningServer) -> dict[str, dict[str, Any]]:
    reply = admin(server, "GET", "/admin/models")
    assert reply.status == 200
    return {m["name"]: m["versions"].get("1", {"state": "LOADING"}) for m in orjson.loads(reply.body)["models"]}


def metric(server: RunningServer, family: str, **labels: str) -> float | None:
    text = request(server.port, "GET", "/metrics").body.decode()
    for each in text_string_to_metric_families(text):
        for sample in each.samples:
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_a_model_synthetic_data_does_not_suit_still_serves(server: RunningServer) -> None:
    assert versions(server)["synthetic_fails"]["state"] == "READY"
    assert metric(server, "tensorgate_model_warmup_failures_total", model="synthetic_fails", version="1") == 1
    assert metric(server, "tensorgate_model_warmup_failures_total", model="synthetic_works") is None
    body = orjson.dumps(string_request(list(range(16)), [1] * 16))
    for _ in range(SEED_CALLS + 2):  # its cost line is fitted from these
        reply = request(
            server.port, "POST", "/v2/models/synthetic_fails/infer", body, {"Content-Type": "application/json"}
        )
        assert reply.status == 200, reply.body
    outputs = {o["name"]: o["data"] for o in orjson.loads(reply.body)["outputs"]}
    assert outputs["OUTPUT0"] == [str(v + 1) for v in range(16)]


def test_a_version_warmed_up_on_its_own_samples_is_ready(server: RunningServer) -> None:
    assert versions(server)["own_samples"]["state"] == "READY"
    assert metric(server, "tensorgate_model_warmup_failures_total", model="own_samples") is None


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("refused_sample", "warm-up sample warmup/b.json failed"),
        ("invalid_sample", "warmup/a.json is not a valid request for the model: missing inputs: INPUT1"),
        ("npz_sample", "warmup/a.npz: warm-up samples are V2 request bodies named *.json"),
    ],
)
def test_a_failing_sample_of_its_own_fails_the_load(server: RunningServer, model: str, message: str) -> None:
    status = versions(server)[model]
    assert status["state"] == "FAILED"
    assert message in status["error"]
    assert metric(server, "tensorgate_model_load_failures_total", model=model, reason="warmup") == 1


# -- the cost model and the executor ----------------------------------------------------------


class ThreadRecorder:
    """A runtime (identity on a real ONNX Runtime session) that notes which thread ran each call."""

    def __init__(self, tmp_path: Path) -> None:
        self.inner = OnnxRuntime.load(
            write_model(tmp_path, "m", 1, identity("FP32", ["batch", 4])), OnnxOptions(), Devices(0, False)
        )
        self.threads: list[str] = []

    platform = "onnxruntime_onnx"
    provider = "CPUExecutionProvider"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.outputs

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return self.inner.run(inputs, outputs)

    def close(self) -> None:
        self.inner.close()


def rows(n: int) -> dict[str, np.ndarray]:
    return {"INPUT0": np.ones((n, 4), dtype=np.float32)}


def test_inline_calls_are_capped_by_element_count_whatever_the_prediction(tmp_path: Path) -> None:
    runtime = ThreadRecorder(tmp_path)
    # What the warm-up fits for a fixed batch dimension: every size predicted as cheap as one row.
    flat = CostModel(base_s=1e-6, per_element_s=0.0, base_elements=4)
    executor = Executor(runtime, concurrency=1, inline_threshold_s=50e-6, cost=flat, name="m-1")

    async def calls() -> None:
        small, big = rows(INLINE_MAX_ELEMENTS // 4), rows(INLINE_MAX_ELEMENTS // 4 + 1)
        await executor.run(small, ["OUTPUT0"], INLINE_MAX_ELEMENTS)
        await executor.run(big, ["OUTPUT0"], INLINE_MAX_ELEMENTS + 4)
        await executor.close()

    asyncio.run(calls())
    assert runtime.threads[0] == "MainThread"  # at the cap: on the event loop
    assert runtime.threads[1].startswith("infer-m-1")  # over it: in the version's pool


def test_an_unmeasured_version_runs_in_threads_until_real_calls_fit_its_cost(tmp_path: Path) -> None:
    runtime = ThreadRecorder(tmp_path)
    cost = unmeasured(runtime.inputs)
    assert not cost.measured and cost.base_elements == 4
    # Even a threshold that would inline everything does not inline an unmeasured version.
    executor = Executor(runtime, concurrency=1, inline_threshold_s=10.0, cost=cost, name="m-1")

    async def calls() -> None:
        for i in range(SEED_CALLS):
            await executor.run(rows(1 + i % 2), ["OUTPUT0"], 4 * (1 + i % 2))
        await executor.run(rows(1), ["OUTPUT0"], 4)
        await executor.close()

    asyncio.run(calls())
    assert all(name.startswith("infer-m-1") for name in runtime.threads[:SEED_CALLS])
    assert executor.cost.measured and executor.cost.base_elements == 4 and executor.cost.base_s < 1.0
    assert runtime.threads[SEED_CALLS] == "MainThread"  # fitted: cheap calls run inline now


def test_fit_takes_the_smallest_calls_median_and_never_a_negative_slope() -> None:
    line = fit([(4, 1.0), (4, 3.0), (4, 2.0), (8, 6.0), (12, 10.0)])
    assert (line.base_s, line.per_element_s, line.base_elements) == (2.0, 1.0, 4)
    assert fit([(4, 5.0), (40, 1.0)]).per_element_s == 0.0  # noise: bigger looked faster
    assert fit([(4, 5.0)]).predict(400) == 5.0
