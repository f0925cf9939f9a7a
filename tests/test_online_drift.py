"""Online drift: a shifted feature shows in tensorgate_drift_psi, and the webhook fires once."""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.drift.online import Window, post_json
from tests.onnx_models import identity, write_model
from tests.rawhttp import request
from tests.server import AUTH, RunningServer, serve


class Hooks:
    """A webhook receiver on a loopback port: the events it got (``redirect``: it answers 302 to it).

    ``calls`` counts every request, whatever its method, so that a client that follows a
    redirect (which turns a POST into a GET) is seen too.
    """

    def __init__(self, redirect: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.calls: list[str] = []
        received, calls = self.events, self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                calls.append("POST")
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                received.append(orjson.loads(body))
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                calls.append("GET")
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrain"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.close()


def psi_gauges(server: RunningServer) -> dict[str, float]:
    found = {}
    for line in request(server.port, "GET", "/metrics").body.decode().splitlines():
        if line.startswith("tensorgate_drift_psi{"):
            feature = line.split('feature="')[1].split('"')[0]
            found[feature] = float(line.rsplit(" ", 1)[1])
    return found


def send(server: RunningServer, rows: np.ndarray) -> None:
    for row in rows:
        doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}
        assert request(server.port, "POST", "/v2/models/m/infer", orjson.dumps(doc)).status == 200


def test_sustained_drift_sets_the_gauge_and_calls_the_webhook_once(tmp_path: Path, hooks: Hooks) -> None:
    rng = np.random.default_rng(0)
    config = (
        f'[drift]\nreference = "reference.npy"\nwindow = 200\ninterval_s = 0.2\nsustain = 2\n'
        f'cooldown_s = 3600\nwebhook = "{hooks.url}"\n'
    )
    write_model(tmp_path / "models", "m", 1, identity("FP32"), config=config)
    np.save(tmp_path / "models" / "m" / "reference.npy", rng.normal(size=(2000, 4)).astype(np.float32))
    with serve(tmp_path / "models", log_dir=tmp_path / "log", predlog_flush_interval_s=0.01) as server:
        calm: dict[str, float] = {}
        deadline = time.monotonic() + 10
        while len(calm) < 4 and time.monotonic() < deadline:  # the monitor starts watching once the model loads
            send(server, rng.normal(size=(100, 4)))  # like the reference: no drift
            time.sleep(0.3)
            calm = psi_gauges(server)
        assert set(calm) == {f"INPUT0[{i}]" for i in range(4)} and max(calm.values()) < 0.2
        assert hooks.events == []
        send(server, np.add(rng.normal(size=(200, 4)), [0, 0, 0, 2]))  # feature 3 moves
        deadline = time.monotonic() + 10
        while not hooks.events and time.monotonic() < deadline:
            time.sleep(0.05)
        send(server, np.add(rng.normal(size=(100, 4)), [0, 0, 0, 2]))  # it stays: no second call
        time.sleep(1.0)
        shifted = psi_gauges(server)
    assert len(hooks.events) == 1
    (event,) = hooks.events
    assert event["event"] == "drift" and event["model"] == "m" and event["version"] == "1"
    assert event["drifted"] == ["INPUT0[3]"] and event["checks_over"] >= 2 and event["window_rows"] == 200
    assert shifted["INPUT0[3]"] > 1.0 and max(v for k, v in shifted.items() if k != "INPUT0[3]") < 0.2


def test_a_short_blip_does_not_call_the_webhook(tmp_path: Path, hooks: Hooks) -> None:
    rng = np.random.default_rng(1)
    config = f'[drift]\nreference = "ref.npy"\nwindow = 100\ninterval_s = 0.3\nsustain = 100\nwebhook = "{hooks.url}"\n'
    write_model(tmp_path / "models", "m", 1, identity("FP32"), config=config)
    np.save(tmp_path / "models" / "m" / "ref.npy", rng.normal(size=(1000, 4)).astype(np.float32))
    with serve(tmp_path / "models", log_dir=tmp_path / "log", predlog_flush_interval_s=0.01) as server:
        deadline = time.monotonic() + 10
        while psi_gauges(server).get("INPUT0[0]", 0) < 1.0 and time.monotonic() < deadline:
            send(server, np.add(rng.normal(size=(50, 4)), [3, 0, 0, 0]))
            time.sleep(0.3)
        assert psi_gauges(server)["INPUT0[0]"] > 1.0
    assert hooks.events == []  # over the threshold, but not for 100 checks in a row


def test_a_reference_outside_the_model_directory_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(tmp_path / "models", "m", 1, identity("FP32"), config='[drift]\nreference = "a/../../x.npy"\n')
    with serve(tmp_path / "models", log_dir=tmp_path / "log", strict_readiness=False, ready=False) as server:
        time.sleep(0.5)
        reply = request(server.port, "GET", "/v2/models/m")
        detail = request(server.port, "GET", "/admin/models", b"", AUTH)  # the reason is for admins only
    assert reply.status == 503
    assert b"drift.reference: must be a relative path inside" in detail.body


def test_the_window_keeps_the_last_rows() -> None:
    window = Window(5, 2)
    window.add(np.arange(6).reshape(3, 2))
    assert window.snapshot().tolist() == [[0, 1], [2, 3], [4, 5]]
    window.add(np.arange(6, 14).reshape(4, 2))
    assert sorted(window.snapshot()[:, 0].tolist()) == [4, 6, 8, 10, 12]
    window.add(np.arange(100, 120).reshape(10, 2))
    assert sorted(window.snapshot()[:, 0].tolist()) == [110, 112, 114, 116, 118]


def test_a_reference_symlinked_out_of_the_model_directory_is_refused(tmp_path: Path) -> None:
    from gateway.registry.base import RegistryError
    from gateway.registry.local import LocalRegistry

    write_model(tmp_path / "models", "m", 1, identity("FP32"))
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((2, 2)))
    (tmp_path / "models" / "m" / "ref.npy").symlink_to(secret)
    np.save(tmp_path / "models" / "m" / "good.npy", np.zeros((2, 2)))
    registry = LocalRegistry(tmp_path / "models")
    assert registry.model_file("m", "good.npy").name == "good.npy"
    with pytest.raises(RegistryError, match="outside the model's directory"):
        registry.model_file("m", "ref.npy")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.model_file("m", "missing.npy")


class Stalling:
    """A webhook receiver that accepts, then answers one byte every 0.2 s and never finishes."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hits: list[float] = []
        stop, hits = self.stop, self.hits

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                hits.append(time.monotonic())
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10_000:
                    if stop.wait(0.2):
                        return
                    try:
                        self.request.sendall(bytes([byte]))
                    except OSError:
                        return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrain"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def metric(server: RunningServer, name: str, **labels: str) -> float | None:
    for line in request(server.port, "GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def send_to(server: RunningServer, model: str, rows: np.ndarray) -> None:
    for row in rows:
        doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}
        assert request(server.port, "POST", f"/v2/models/{model}/infer", orjson.dumps(doc)).status == 200


def test_a_malformed_reference_spares_the_monitor_and_is_retried_when_its_file_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    config = '[drift]\nreference = "ref.jsonl"\nwindow = 100\ninterval_s = 0.2\n'
    write_model(tmp_path / "models", "bad", 1, identity("FP32"), config=config)
    write_model(tmp_path / "models", "m", 1, identity("FP32"), config=config)
    good = b"".join(
        orjson.dumps({"inputs": {"INPUT0": {"datatype": "FP32", "shape": [1, 4], "data": row.tolist()}}}) + b"\n"
        for row in rng.normal(size=(500, 4))
    )
    (tmp_path / "models" / "m" / "ref.jsonl").write_bytes(good)
    (tmp_path / "models" / "bad" / "ref.jsonl").write_bytes(b"[1, 2, 3]\n[4, 5, 6]\n")  # JSON, not records
    write_model(tmp_path / "models", "narrow", 1, identity("FP32"), config=config.replace(".jsonl", ".npy"))
    np.save(tmp_path / "models" / "narrow" / "ref.npy", rng.normal(size=(500, 3)))  # 3 features, the input has 4
    with serve(tmp_path / "models", log_dir=tmp_path / "log", predlog_flush_interval_s=0.01) as server:
        deadline = time.monotonic() + 20
        while metric(server, "tensorgate_drift_psi", model="m") is None:  # the other model is watched
            assert time.monotonic() < deadline, "the monitor stopped"
            send_to(server, "m", rng.normal(size=(50, 4)))
            send_to(server, "bad", rng.normal(size=(50, 4)))
            time.sleep(0.3)
        assert metric(server, "tensorgate_drift_errors_total", model="bad", stage="reference") == 1  # once
        assert metric(server, "tensorgate_drift_reference_loaded", model="bad") == 0
        assert metric(server, "tensorgate_drift_reference_loaded", model="m") == 1
        assert metric(server, "tensorgate_drift_errors_total", model="narrow", stage="reference") == 1
        assert metric(server, "tensorgate_drift_reference_loaded", model="narrow") == 0
        assert metric(server, "tensorgate_drift_psi", model="bad") is None
        (tmp_path / "models" / "bad" / "ref.jsonl").write_bytes(good)  # fixed: tried again
        deadline = time.monotonic() + 20
        while metric(server, "tensorgate_drift_psi", model="bad") is None:
            assert time.monotonic() < deadline, "the fixed reference was never tried again"
            send_to(server, "bad", rng.normal(size=(50, 4)))
            time.sleep(0.3)
        assert metric(server, "tensorgate_drift_reference_loaded", model="bad") == 1
        assert metric(server, "tensorgate_drift_errors_total", model="bad", stage="reference") == 1


def test_the_webhook_does_not_follow_a_redirect(tmp_path: Path, hooks: Hooks) -> None:
    mover = Hooks(redirect=hooks.url)
    try:
        rng = np.random.default_rng(3)
        config = (
            f'[drift]\nreference = "ref.npy"\nwindow = 100\ninterval_s = 0.2\nsustain = 1\n'
            f'cooldown_s = 3600\nwebhook = "{mover.url}"\n'
        )
        write_model(tmp_path / "models", "m", 1, identity("FP32"), config=config)
        np.save(tmp_path / "models" / "m" / "ref.npy", rng.normal(size=(1000, 4)).astype(np.float32))
        with serve(tmp_path / "models", log_dir=tmp_path / "log", predlog_flush_interval_s=0.01) as server:
            deadline = time.monotonic() + 20
            while metric(server, "tensorgate_drift_errors_total", model="m", stage="webhook") is None:
                assert time.monotonic() < deadline, "the webhook was never called"
                send_to(server, "m", np.add(rng.normal(size=(50, 4)), [3, 0, 0, 0]))
                time.sleep(0.3)
            time.sleep(0.5)
        assert mover.calls == ["POST"]  # called once (the cool-down), the 302 not followed
        assert hooks.calls == []
    finally:
        mover.close()


def test_the_webhook_call_has_a_total_deadline() -> None:
    stalling = Stalling()
    moved = Hooks(redirect="http://127.0.0.1:9/elsewhere")
    try:
        started = time.monotonic()
        with pytest.raises(OSError, match="no answer within 1 s"):
            asyncio.run(post_json(stalling.url, b"{}", timeout_s=1.0))  # it trickles: never a whole answer
        assert time.monotonic() - started < 5.0
        with pytest.raises(OSError, match="answered 302, a redirect: not followed"):
            asyncio.run(post_json(moved.url, b"{}", timeout_s=5.0))
    finally:
        stalling.close()
        moved.close()


def test_a_stalling_webhook_is_given_up_after_its_deadline_and_checks_go_on(tmp_path: Path) -> None:
    stalling = Stalling()
    try:
        rng = np.random.default_rng(4)
        config = (
            f'[drift]\nreference = "ref.npy"\nwindow = 100\ninterval_s = 0.2\nsustain = 1\n'
            f'cooldown_s = 3600\nwebhook = "{stalling.url}"\nwebhook_timeout_s = 1\n'
        )
        write_model(tmp_path / "models", "m", 1, identity("FP32"), config=config)
        np.save(tmp_path / "models" / "m" / "ref.npy", rng.normal(size=(1000, 4)).astype(np.float32))
        with serve(tmp_path / "models", log_dir=tmp_path / "log", predlog_flush_interval_s=0.01) as server:
            deadline = time.monotonic() + 20
            while not stalling.hits:
                assert time.monotonic() < deadline, "the webhook was never called"
                send_to(server, "m", np.add(rng.normal(size=(50, 4)), [3, 0, 0, 0]))
                time.sleep(0.3)
            send_to(server, "m", rng.normal(size=(100, 4)))  # back to normal while the call stalls
            while metric(server, "tensorgate_drift_errors_total", model="m", stage="webhook") is None:
                assert time.monotonic() < deadline, "the stalled call was never given up"
                time.sleep(0.1)
            gave_up = time.monotonic() - stalling.hits[0]
            calm = metric(server, "tensorgate_drift_psi", model="m", feature="INPUT0[0]")
        assert 0.9 < gave_up < 5.0  # webhook_timeout_s = 1, though the receiver kept trickling
        assert calm is not None and calm < 1.0  # checks went on while the call stalled
        assert len(stalling.hits) == 1
    finally:
        stalling.close()
