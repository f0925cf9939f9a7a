"""``admin_port``: the admin API on a listener of its own, inference and probes on the main port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.config_error import ConfigError
from gateway.settings import load_settings
from tests.onnx_models import identity, write_model
from tests.rawhttp import request
from tests.server import AUTH, admin, free_port, serve, wait_for

ROOT = Path(__file__).resolve().parent.parent
BODY = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_model(tmp_path / "models", "m", 1, identity("FP32"))
    return tmp_path / "models"


def test_admin_paths_answer_only_on_the_admin_port(repository: Path) -> None:
    with serve(repository, admin_listener=True) as server:
        main, adm = server.port, server.admin_port
        assert main != adm
        # The main port: inference, health, metadata and metrics; no admin API, token or not.
        assert request(main, "POST", "/v2/models/m/infer", BODY, JSON).status == 200
        for path in ("/v2/health/ready", "/v2/health/live", "/v2", "/v2/models/m", "/metrics"):
            assert request(main, "GET", path).status == 200, path
        for method, path in (("GET", "/admin/models"), ("POST", "/v2/repository/index"), ("GET", "/admin")):
            reply = request(main, method, path, b"{}" if method == "POST" else b"", AUTH)
            assert reply.status == 404, path
            assert "admin port" in orjson.loads(reply.body)["error"]
        # The admin port: the admin API, behind the token as ever; nothing else.
        assert admin(server, "GET", "/admin/models").status == 200
        assert admin(server, "POST", "/v2/repository/index", {}).status == 200
        assert request(adm, "GET", "/admin/models").status == 401
        assert admin(server, "GET", "/admin/models/m/route").status == 200
        for method, path in (("POST", "/v2/models/m/infer"), ("GET", "/v2/health/ready"), ("GET", "/metrics")):
            reply = request(adm, method, path, BODY if method == "POST" else b"", JSON)
            assert reply.status == 404, path
            assert "inference port" in orjson.loads(reply.body)["error"]


def test_without_admin_port_everything_answers_on_one_port(repository: Path) -> None:
    with serve(repository) as server:
        assert server.admin_port == server.port and server.settings.admin_port == 0
        assert admin(server, "GET", "/admin/models").status == 200
        assert request(server.port, "POST", "/v2/models/m/infer", BODY, JSON).status == 200


def test_admin_port_from_toml_env_and_flag(tmp_path: Path) -> None:
    config = tmp_path / "tensorgate.toml"
    config.write_text("port = 8000\nadmin_port = 8081\n")
    assert load_settings(config, environ={}).admin_port == 8081
    assert load_settings(config, environ={"TENSORGATE_ADMIN_PORT": "9001"}).admin_port == 9001
    assert load_settings(config, environ={}, overrides={"admin_port": "9002"}).admin_port == 9002
    assert load_settings(environ={}).admin_port == 0
    for bad in ("8000", "-1", "70000", "x"):
        with pytest.raises(ConfigError, match="admin_port"):
            load_settings(config, environ={"TENSORGATE_ADMIN_PORT": bad})


def test_tensorgate_serve_listens_on_both_ports(repository: Path, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--port", str(port),
         "--admin-port", str(admin_port), "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "log")],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "TENSORGATE_ADMIN_TOKEN": AUTH["Authorization"].split()[1],
                 "TENSORGATE_GRPC_PORT": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=60)
        assert request(admin_port, "GET", "/admin/models", headers=AUTH).status == 200
        assert request(port, "GET", "/admin/models", headers=AUTH).status == 404
        assert request(port, "POST", "/v2/models/m/infer", BODY, JSON).status == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert f"admin API on port {admin_port}" in output


def test_a_busy_admin_port_is_one_line_and_exit_3(repository: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--port", str(free_port()),
             "--admin-port", str(taken.getsockname()[1]), "--state-dir", str(tmp_path / "state"),
             "--log-dir", str(tmp_path / "log")],
            cwd=ROOT, env={"PATH": "/usr/bin:/bin", "TENSORGATE_ADMIN_TOKEN": AUTH["Authorization"].split()[1],
                 "TENSORGATE_GRPC_PORT": "0"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    # As uvicorn itself answers a busy main port: status 3, the reason logged, no traceback.
    assert done.returncode == 3 and "cannot listen on 127.0.0.1" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
