"""Start-up: configuration errors as one line (exit 2), empty repositories, readiness, restarts, clean logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from onnx import TensorProto, helper

from gateway.cli import check_startup
from gateway.config_error import ConfigError
from gateway.settings import Settings
from tests.onnx_models import _model, identity, write_model
from tests.rawhttp import request
from tests.server import admin, free_port, serve, wait_for

ROOT = Path(__file__).resolve().parent.parent
GOOD = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
TOKEN = "startup-test-token-0123456789"


def tensorgate_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gateway serve ARGS`` expected to stop at once (a configuration error)."""
    environ = {**os.environ, "TENSORGATE_ADMIN_TOKEN": TOKEN, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=environ, check=False,
    )  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused start (exit 2, no traceback, nothing on stdout)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- configuration errors (issue 13, item 9) ----------------------------------------------------


def test_configuration_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "m", 1, identity("FP32"))
    base = ["--repository", str(repo), "--state-dir", str(tmp_path / "state"), "--port", "0"]
    short = one_line_error(tensorgate_serve(*base, env={"TENSORGATE_ADMIN_TOKEN": "short"}))
    assert "admin token from TENSORGATE_ADMIN_TOKEN must be 16 or more" in short
    assert "port: expected int, got 'eighty'" in one_line_error(tensorgate_serve(*base, "--port", "eighty"))
    assert "unrecognized arguments: --bogus" in one_line_error(tensorgate_serve(*base, "--bogus"))
    missing = one_line_error(tensorgate_serve(*base, "--config", str(tmp_path / "nope.toml")))
    assert "nope.toml: cannot be read" in missing
    (tmp_path / "bad.toml").write_text("port = [")
    assert "not valid TOML" in one_line_error(tensorgate_serve(*base, "--config", str(tmp_path / "bad.toml")))
    token_file = tmp_path / "no-such-token"
    unreadable = one_line_error(tensorgate_serve(*base, "--admin-token-file", str(token_file), env={
        "TENSORGATE_ADMIN_TOKEN": ""}))  # fmt: skip
    assert f"cannot read the admin token file {token_file}" in unreadable
    (tmp_path / "a-file").write_text("")
    no_state = one_line_error(tensorgate_serve(*base, "--state-dir", str(tmp_path / "a-file" / "state"), env={
        "TENSORGATE_ADMIN_TOKEN": ""}))  # fmt: skip
    assert f"{tmp_path / 'a-file' / 'state'}" in no_state and "Not a directory" in no_state
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "predlog-hash-key").write_bytes(b"")
    assert "predlog-hash-key holds 0 bytes" in one_line_error(tensorgate_serve(*base))


def test_a_host_that_does_not_resolve_is_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "m", 1, identity("FP32"))
    assert "host: cannot resolve 'no-such-host.invalid'" in one_line_error(
        tensorgate_serve("--repository", str(repo), "--host", "no-such-host.invalid", "--port", "8000")
    )


# -- empty repositories (item 7) ----------------------------------------------------------------


def test_a_missing_or_empty_repository_is_a_startup_error(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state"), "--port", "0"]
    missing = one_line_error(tensorgate_serve("--repository", str(tmp_path / "nowhere"), *state))
    assert f"repository {tmp_path / 'nowhere'} does not exist" in missing and "--allow-empty" in missing
    (tmp_path / "empty" / "m" / "1").mkdir(parents=True)  # a version directory without a model file
    empty = one_line_error(tensorgate_serve("--repository", str(tmp_path / "empty"), *state))
    assert f"repository {tmp_path / 'empty'} holds no model" in empty


def test_an_mlflow_registry_needs_no_repository_directory(tmp_path: Path) -> None:
    # The models come from MLflow (or its cache while it is down); the directory only holds
    # optional config.toml overrides, so its absence is no error.
    settings = Settings(registry_kind="mlflow", registry_tracking_uri="http://127.0.0.1:9",
                        repository=tmp_path / "overrides", state_dir=tmp_path / "state", port=0)  # fmt: skip
    check_startup(settings, environ={"TENSORGATE_ADMIN_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="does not exist"):
        check_startup(replace(settings, registry_kind="local"), environ={"TENSORGATE_ADMIN_TOKEN": TOKEN})


@pytest.mark.parametrize("how", ["flag", "env", "toml"])
def test_allow_empty_starts_without_models(tmp_path: Path, how: str) -> None:
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--repository", str(tmp_path / "later"), "--port", str(port)]
    command += ["--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "log")]
    env = {**os.environ, "TENSORGATE_ADMIN_TOKEN": TOKEN}
    if how == "flag":
        command.append("--allow-empty")
    elif how == "env":
        env["TENSORGATE_ALLOW_EMPTY"] = "true"
    else:
        (tmp_path / "tensorgate.toml").write_text("allow_empty = true\n")
        command += ["--config", str(tmp_path / "tensorgate.toml")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Strict readiness: nothing is routed, so nothing routed is broken (Triton's answer too).
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=60)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "Traceback" not in output


# -- readiness (item 8) -------------------------------------------------------------------------


def test_a_broken_canary_after_a_restart_fails_strict_readiness_and_names_itself(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "good", 1, identity("FP32"))
    write_model(repo, "canaried", 1, identity("FP32"))
    write_model(repo, "canaried", 2, identity("FP32"))
    state = tmp_path / "state"
    with serve(repo, state_dir=state) as server:
        assert admin(server, "POST", "/admin/models/canaried/versions/1/load", {}).status == 200
        put = admin(server, "PUT", "/admin/models/canaried/route", {"weights": {"1": 90, "2": 10}})
        assert put.status == 200, put.body
    (repo / "canaried" / "2" / "model.onnx").write_bytes(b"not onnx any more")  # broken while down
    with serve(repo, state_dir=state, ready=False) as server:
        wait_for(server.url + "/v2/models/canaried/versions/1/ready")
        reply = request(server.port, "GET", "/v2/health/ready")
        assert reply.status == 503 and reply.headers["retry-after"] == "1"
        error = reply.json()["error"]  # type: ignore[index]
        assert "routed version 2 of model 'canaried' is FAILED" in error and "'good'" not in error
    # Not strict: "good" serves with all its routed versions, so the pod stays in its Service.
    with serve(repo, state_dir=state, strict_readiness=False) as server:
        assert request(server.port, "GET", "/v2/health/ready").status == 200


def test_not_strict_readiness_needs_one_model_with_every_routed_version_ready(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "only", 1, identity("FP32"))
    write_model(repo, "only", 2, identity("FP32"))
    state = tmp_path / "state"
    with serve(repo, state_dir=state) as server:
        assert admin(server, "POST", "/admin/models/only/versions/1/load", {}).status == 200
        assert admin(server, "PUT", "/admin/models/only/route", {"weights": {"1": 90, "2": 10}}).status == 200
    (repo / "only" / "2" / "model.onnx").write_bytes(b"broken")
    with serve(repo, state_dir=state, strict_readiness=False, ready=False) as server:
        wait_for(server.url + "/v2/models/only/versions/1/ready")
        reply = request(server.port, "GET", "/v2/health/ready")
        # Its primary serves, but a tenth of its traffic would fail: no model serves all it routes.
        assert reply.status == 503
        error = reply.json()["error"]  # type: ignore[index]
        assert "no model can serve" in error and "routed version 2 of model 'only' is FAILED" in error


# -- version_policy after a restart (item 5) -----------------------------------------------------


def test_version_policy_all_loads_every_version_again_after_a_restart_with_a_saved_route(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "fraud", 1, identity("FP32"), config='version_policy = "all"\n')
    write_model(repo, "fraud", 2, identity("FP32"))
    write_model(repo, "latest", 1, identity("FP32"))
    write_model(repo, "latest", 2, identity("FP32"))
    state = tmp_path / "state"
    with serve(repo, state_dir=state) as server:
        route = {"weights": {"2": 100}, "sticky_header": "x-user-id"}
        assert admin(server, "PUT", "/admin/models/fraud/route", route).status == 200
        assert admin(server, "PUT", "/admin/models/latest/route", {"weights": {"2": 100}}).status == 200
    with serve(repo, state_dir=state) as server:
        pinned = request(server.port, "POST", "/v2/models/fraud/versions/1/infer", GOOD,
                         {"Content-Type": "application/json"})  # fmt: skip
        assert pinned.status == 200, pinned.body
        models = {m["name"]: m for m in admin(server, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
        assert {v: s["state"] for v, s in models["fraud"]["versions"].items()} == {"1": "READY", "2": "READY"}
        assert models["fraud"]["route"]["sticky_header"] == "x-user-id"  # the saved route, untouched
        assert list(models["latest"]["versions"]) == ["2"]  # "latest": only what the route names


# -- ONNX Runtime's own logs (item 10) ------------------------------------------------------------


def string_to_int() -> object:
    """BYTES decimal strings -> INT32 with ONNX ``Cast``: a non-number makes ONNX Runtime log an error."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["INPUT0"], ["OUTPUT0"], to=TensorProto.INT32)],
        "string_to_int",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, ["batch", 2])],
    )
    return _model(graph)


def test_onnx_runtime_logs_stay_out_of_the_json_log_stream(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "plain", 1, identity("FP32"))
    write_model(repo, "cast", 1, string_to_int())  # type: ignore[arg-type]
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repo), "--port", str(port),
               "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "log")]  # fmt: skip
    command.append("--no-strict-readiness")
    env = {**os.environ, "TENSORGATE_ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=60)
        body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 2],
                                         "data": ["12", "not a number"]}]})  # fmt: skip
        for path in ("/v2/models/cast/infer", "/v2/models/cast/versions/1/infer"):
            reply = request(port, "POST", path, body, {"Content-Type": "application/json"})
            assert reply.status in (400, 500, 503) and "error" in reply.json()  # type: ignore[operator]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and "onnxruntime:" not in output and "\x1b[" not in output
    for line in lines:
        assert orjson.loads(line)["level"], line  # every line is one JSON record
