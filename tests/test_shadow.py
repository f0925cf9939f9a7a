"""Shadow traffic: copies are computed and compared, never returned, and never hurt the primary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.registry.base import Artifact
from gateway.registry.config import ModelConfig
from gateway.release.shadow import ShadowStats, compare
from runtimes.devices import Devices
from runtimes.onnxrt import OnnxRuntime
from tests.gated import GatedRuntime
from tests.onnx_models import add_sub, write_model
from tests.rawhttp import request
from tests.server import ADMIN_TOKEN, RunningServer, serve

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
INPUTS = orjson.dumps(
    {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16} for n in ("INPUT0", "INPUT1")]}
)


class Loader:
    """Real runtimes, each wrapped so a test can hold (hang) or fail it."""

    def __init__(self) -> None:
        self.runtimes: dict[int, GatedRuntime] = {}

    def __call__(self, artifact: Artifact, config: ModelConfig) -> Any:
        assert artifact.model_file is not None
        runtime = GatedRuntime(OnnxRuntime.load(artifact.model_file, config.onnx, Devices(0, False)))
        self.runtimes[artifact.version] = runtime
        return runtime


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def server(tmp_path: Path, loader: Loader) -> Iterator[RunningServer]:
    root = tmp_path / "models"
    # Every call in a thread: a held (hanging) shadow must not hold the event loop.
    write_model(root, "simple", 1, add_sub(0), config='version_policy = "all"\ninline_threshold_us = 0\n')
    write_model(root, "simple", 2, add_sub(100))
    write_model(root, "simple", 3, add_sub(200))
    write_model(root, "simple", 4, add_sub(0))
    with serve(root, loader=loader, shadow_timeout_s=0.3, shadow_max_inflight=4) as running:
        yield running


def route(server: RunningServer, doc: dict[str, Any]) -> None:
    reply = request(server.port, "PUT", "/admin/models/simple/route", orjson.dumps(doc), AUTH)
    assert reply.status == 200, reply.body


def shadow_stats(server: RunningServer) -> dict[str, Any]:
    reply = request(server.port, "GET", "/admin/models", b"", AUTH)
    models = {m["name"]: m for m in reply.json()["models"]}  # type: ignore[index]
    return models["simple"]["shadow"]  # type: ignore[no-any-return]


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def settled(stats: dict[str, Any], copies: int) -> bool:
    """Every mirrored copy has an outcome."""
    return bool(stats["completed"] + stats["dropped"] + stats["failed"] + stats["timed_out"] == copies)


def infer(server: RunningServer) -> dict[str, Any]:
    reply = request(server.port, "POST", "/v2/models/simple/infer", INPUTS)
    assert reply.status == 200, reply.body
    assert reply.headers["x-model-version"] == "1"
    return reply.json()  # type: ignore[return-value]


def test_shadows_are_computed_compared_and_never_returned(server: RunningServer) -> None:
    route(server, {"weights": {"1": 100}, "shadow": {"4": 1.0}})
    for _ in range(20):
        doc = infer(server)
        assert doc["outputs"][0]["data"][0] == 2  # version 1's answer
    wait_for(lambda: settled(shadow_stats(server)["4"], 20))
    stats = shadow_stats(server)["4"]
    assert stats["mirrored"] == 20 and stats["failed"] == stats["timed_out"] == 0
    assert stats["completed"] >= 1  # the rest, if any, dropped over the bound of 4 in flight
    assert stats["agreement"] == 1.0  # version 4 computes what version 1 does


def test_a_failing_shadow_changes_nothing_for_the_primary(server: RunningServer, loader: Loader) -> None:
    loader.runtimes[3].fail_always = True
    route(server, {"weights": {"1": 100}, "shadow": {"3": 1.0}})
    for _ in range(10):
        infer(server)
    wait_for(lambda: settled(shadow_stats(server)["3"], 10))
    stats = shadow_stats(server)["3"]
    assert stats["failed"] >= 1 and stats["completed"] == 0


def test_a_hanging_shadow_times_out_and_overflow_is_dropped(server: RunningServer, loader: Loader) -> None:
    gated = loader.runtimes[2]
    route(server, {"weights": {"1": 100}, "shadow": {"2": 1.0}})
    gated.hold()
    try:
        started = time.monotonic()
        for _ in range(10):
            infer(server)  # each answered at once, the shadow held
        assert time.monotonic() - started < 2.0
        wait_for(lambda: shadow_stats(server)["2"]["timed_out"] >= 1)
        stats = shadow_stats(server)["2"]
        assert stats["mirrored"] == 10
        assert stats["dropped"] >= 1  # only 4 may run at once
        assert stats["completed"] == 0
    finally:
        gated.release()


def test_a_fraction_mirrors_about_that_share(server: RunningServer) -> None:
    route(server, {"weights": {"1": 100}, "shadow": {"4": 0.25}})
    for _ in range(400):
        infer(server)
    wait_for(lambda: shadow_stats(server)["4"]["mirrored"] > 0)
    assert 60 <= shadow_stats(server)["4"]["mirrored"] <= 140


def test_pinned_requests_are_not_mirrored(server: RunningServer) -> None:
    route(server, {"weights": {"1": 100}, "shadow": {"4": 1.0}})
    assert request(server.port, "POST", "/v2/models/simple/versions/1/infer", INPUTS).status == 200
    assert shadow_stats(server) == {}


def test_compare_labels_and_differences() -> None:
    stats = ShadowStats()
    compare(stats, np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), np.array([[0.2, 0.8], [0.3, 0.7]], np.float32))
    assert stats.to_json()["agreement"] == 0.5
    assert stats.to_json()["mean_abs_diff"] == pytest.approx(0.3, abs=1e-6)
    single = ShadowStats()
    compare(single, np.array([[0.7], [0.2]], np.float32), np.array([[0.6], [0.6]], np.float32))
    assert single.to_json()["agreement"] == 0.5
    labels = ShadowStats()
    compare(labels, np.array([1, 2, 3]), np.array([1, 2, 4]))
    assert labels.to_json()["agreement"] == pytest.approx(2 / 3)
    assert labels.to_json()["mean_abs_diff"] is None


def test_coalesced_shadow_copies_are_compared_row_for_row(server: RunningServer) -> None:
    route(server, {"weights": {"1": 100}, "shadow": {"4": 1.0}})

    def one(value: int) -> None:
        body = orjson.dumps(
            {"inputs": [{"name": n, "datatype": "INT32", "shape": [2, 16], "data": [value] * 32}
                        for n in ("INPUT0", "INPUT1")]}
        )  # fmt: skip
        assert request(server.port, "POST", "/v2/models/simple/infer", body).status == 200

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))

    wait_for(lambda: settled(shadow_stats(server)["4"], 200))
    stats = shadow_stats(server)["4"]
    assert stats["completed"] > 0 and stats["failed"] == stats["timed_out"] == 0  # the rest: over the bound of 4
    # Version 4 computes what version 1 does: any misaligned slice of a shared call would disagree.
    assert stats["agreement"] == 1.0


def test_shadow_copies_are_bounded_by_bytes_and_overflow_is_dropped(tmp_path: Path, loader: Loader) -> None:
    root = tmp_path / "models"
    write_model(root, "simple", 1, add_sub(0), config='version_policy = "all"\ninline_threshold_us = 0\n')
    write_model(root, "simple", 2, add_sub(100))
    # Each copy holds 256 bytes (two 1x16 INT32 inputs and the primary's two answers): a budget of
    # 300 holds one. The count (1,024) is no limit here.
    settings = {"shadow_timeout_s": 30.0, "shadow_max_inflight": 1024, "shadow_max_inflight_bytes": 300}
    with serve(root, loader=loader, **settings) as server:  # type: ignore[arg-type]
        route(server, {"weights": {"1": 100}, "shadow": {"2": 1.0}})
        gated = loader.runtimes[2]
        gated.hold()
        try:
            for _ in range(10):
                infer(server)  # each answered at once
            gated.wait_entered()
            stats = shadow_stats(server)["2"]
            assert stats["mirrored"] == 10 and stats["dropped"] == 9  # counted as drops, as for the count
            metrics = request(server.port, "GET", "/metrics").body.decode()
            assert "tensorgate_shadow_inflight_bytes 256.0" in metrics
            assert 'tensorgate_shadow_dropped_total{model="simple",version="2"} 9.0' in metrics
        finally:
            gated.release()
        wait_for(lambda: settled(shadow_stats(server)["2"], 10))
        assert shadow_stats(server)["2"]["completed"] == 1
        assert "tensorgate_shadow_inflight_bytes 0.0" in request(server.port, "GET", "/metrics").body.decode()
