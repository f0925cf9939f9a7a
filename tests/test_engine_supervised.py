"""The engine under the real supervisor (``tensorgate serve --workers 2``, tests/host.py).

One copy of each batched version in the engine however many workers; the engine killed with
SIGKILL: the requests in flight there get 503 at once, the supervisor restarts it, the workers
load their versions there again and the host is ready and serving.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.host import Host, serve_host
from tests.onnx_models import identity, slow_matmul, write_model
from tests.server import wait_for
from tests.test_engine_restart import SLOW, SLOW_BODY, call

BATCHED = 'max_batch_size = 8\nplacement = "engine"\n'
IDENTITY_BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


def engine_loads(host: Host, model: str) -> list[dict[str, object]]:
    """The engine's log records of ``model`` becoming READY."""
    return [
        r
        for r in host.records()
        if r.get("process") == "engine-cpu" and str(r.get("message", "")).startswith(f"model {model!r} version 1 READY")
    ]


def test_supervised_engine_loads_once_and_comes_back_after_sigkill(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "ident", 1, identity("FP32"), BATCHED)
    write_model(root, "slow", 1, slow_matmul(size=1024), SLOW)
    with serve_host(root, workers=2) as host, ThreadPoolExecutor(8) as pool:
        assert len(engine_loads(host, "ident")) == 1
        assert len(engine_loads(host, "slow")) == 1
        status, body, _ = call(host.url + "/v2/models/ident/infer", IDENTITY_BODY)
        assert status == 200 and body["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]

        engine = host.pids("engine")["engine-cpu"]
        futures = [pool.submit(call, host.url + "/v2/models/slow/infer", SLOW_BODY) for _ in range(8)]
        time.sleep(0.3)
        killed = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        answers = [f.result(timeout=30) for f in futures]
        assert time.monotonic() - killed < 10
        assert all(status in (200, 503) for status, _, _ in answers), answers
        assert any(status == 503 for status, _, _ in answers), answers

        # The supervisor starts a new engine; the workers load their versions there again.
        host.wait_until(lambda: host.pids("engine").get("engine-cpu", engine) != engine, "a new engine", 30)
        wait_for(host.url + "/v2/health/ready", timeout_s=120)
        host.wait_until(lambda: len(engine_loads(host, "ident")) == 2, "ident loaded again in the engine", 60)
        for _ in range(4):  # whichever worker answers
            status, body, _ = call(host.url + "/v2/models/ident/infer", IDENTITY_BODY)
            assert status == 200, body


def test_big_tensors_cross_in_a_private_shared_memory_folder_removed_at_the_stop(tmp_path: Path) -> None:
    """Tensors over the threshold go through files in /dev/shm/<run dir name> (0700, made by the
    supervisor before any child, so no other local user can take the files' names), and the
    folder is gone once the host stopped, with whatever a killed process might have left."""
    import stat

    from gateway.host.roles import shared_memory_dir

    root = tmp_path / "models"
    write_model(root, "wide", 1, identity("FP32", ["batch", 2048]), BATCHED)
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2048], "data": [0.5] * 2048}]}
    with serve_host(root, workers=2, environ={"TENSORGATE_ENGINE_SHM_BYTES": "1024"}) as host:
        (start,) = [r for r in host.records() if r.get("event") == "host_start"]
        shared = shared_memory_dir(Path(str(start["run_dir"])))
        info = shared.lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        for _ in range(6):
            status, answer, _ = call(host.url + "/v2/models/wide/infer", body)
            assert status == 200 and answer["outputs"][0]["data"] == [0.5] * 2048, answer
        assert not list(shared.iterdir())  # every file read was unlinked by its reader
        (shared / "left-by-a-killed-process").write_bytes(b"x")
        assert host.stop() == 0
    assert not shared.exists()
