"""The engine killed with SIGKILL: in-flight requests fail with 503 at once, then it comes back.

A real engine and worker (tests/engine_host.py). The engine computes a slow model (a good
fraction of a second per call, one at a time) when it is killed: every request in flight is
answered 503 within seconds, not when some timeout expires; the worker is not ready, and says
why in /admin/models; once the engine runs again the worker loads its versions there again and
serves.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.engine_host import engine_host
from tests.onnx_models import add_sub, slow_matmul, write_model
from tests.server import AUTH, wait_for

SLOW = """
placement = "engine"
max_batch_size = 0
instance_count = 1
[onnx]
graph_optimization = "disable"
intra_op_threads = 1
"""
SLOW_BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
SIMPLE_BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
    ]
}


def call(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, dict[str, Any], float]:
    """GET (no body) or POST ``url``; the status, the JSON answer and the seconds it took."""
    started = time.monotonic()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, AUTH)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}"), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), time.monotonic() - started


def test_engine_killed_fails_in_flight_at_once_then_reloads(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "slow", 1, slow_matmul(size=1024), config=SLOW)
    write_model(root, "simple", 1, add_sub(), config='placement = "engine"\n')
    with engine_host(root, workers=1) as host, ThreadPoolExecutor(8) as pool:
        url = host.url(0)
        status, _, _ = call(url + "/v2/models/slow/infer", SLOW_BODY)
        assert status == 200
        # Eight calls of the slow model, one at a time in the engine: seconds of work queued there.
        futures = [pool.submit(call, url + "/v2/models/slow/infer", SLOW_BODY) for _ in range(8)]
        time.sleep(0.3)
        assert not all(f.done() for f in futures)
        engine = host.engine
        assert engine is not None
        killed = time.monotonic()
        os.killpg(engine.pid, signal.SIGKILL)
        answers = [f.result(timeout=30) for f in futures]
        failed = [(status, body) for status, body, _ in answers if status != 200]
        assert failed, answers  # at least the one computing and those queued behind it
        for status, body in failed:
            assert status == 503, body
            assert "engine" in body["error"]
        assert time.monotonic() - killed < 10  # at once, not after a timeout
        # While the engine is down: not ready, why in /admin/models, requests refused at once.
        wait_for(url + "/v2/health/ready", status=503, timeout_s=10)
        status, body, took = call(url + "/v2/models/simple/infer", SIMPLE_BODY)
        assert status == 503 and took < 5, body
        status, models, _ = call(url + "/admin/models")
        assert status == 200
        errors = [v.get("error", "") for m in models["models"] for v in m["versions"].values()]
        assert any("engine is restarting" in e for e in errors), models
        # The supervisor would restart it: a new incarnation; the worker loads its versions there again.
        engine.wait(timeout=10)
        host.start_engine()
        wait_for(url + "/v2/health/ready", timeout_s=120)
        status, body, _ = call(url + "/v2/models/simple/infer", SIMPLE_BODY)
        assert status == 200 and body["outputs"][0]["data"][:3] == [1, 2, 3]
        status, _, _ = call(url + "/v2/models/slow/infer", SLOW_BODY)
        assert status == 200
        assert "READY again in the cpu engine" in host.log("worker-0")


def test_engine_sigterm_finishes_what_is_in_flight_and_exits_0(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "slow", 1, slow_matmul(size=1024), config=SLOW)
    with engine_host(root, workers=1) as host, ThreadPoolExecutor(3) as pool:
        url = host.url(0)
        futures = [pool.submit(call, url + "/v2/models/slow/infer", SLOW_BODY) for _ in range(3)]
        time.sleep(0.3)
        engine = host.engine
        assert engine is not None
        os.killpg(engine.pid, signal.SIGTERM)
        answers = [f.result(timeout=60) for f in futures]
        assert engine.wait(timeout=60) == 0
        # Sent before the signal: each is computed and answered (none lost).
        assert [status for status, _, _ in answers] == [200, 200, 200], answers
        assert "engine cpu stopped" in host.log("engine-cpu")


def test_a_worker_silent_past_the_sweep_loads_its_versions_again(tmp_path: Path) -> None:
    """A worker whose loop stalls past the engine's sweep (WORKER_TIMEOUT_S) loses its holds there;
    when it answers again the engine tells it a new incarnation, so it loads them again and serves
    (before: 503 "not loaded in the engine" until the worker was restarted)."""
    root = tmp_path / "models"
    write_model(root, "simple", 1, add_sub(), config='placement = "engine"\n')
    with engine_host(root, workers=1) as host:
        url = host.url(0)
        assert call(url + "/v2/models/simple/infer", SIMPLE_BODY)[0] == 200
        (worker,) = [proc for proc in host.procs if proc is not host.engine]
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while "releasing its versions" not in host.log("engine-cpu"):
                assert time.monotonic() < deadline, host.log("engine-cpu")
                time.sleep(0.5)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        status, body, _ = call(url + "/v2/models/simple/infer", SIMPLE_BODY)
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body, _ = call(url + "/v2/models/simple/infer", SIMPLE_BODY)
        assert status == 200, body
        assert body["outputs"][0]["data"] == list(range(1, 17))
