"""The ``tensorgate`` command, as the README runs it: a real process, stopped by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from gateway.settings import load_settings, setting_types
from tests.onnx_models import slow_matmul, write_model
from tests.rawhttp import request
from tests.server import free_port, prediction_log, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_serve_the_examples_then_drain_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--repository",
            "examples/models",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
            "--log-dir",
            str(tmp_path / "log"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready")
        body = orjson.dumps(
            {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
        )
        reply = request(port, "POST", "/v2/models/fraud/infer", body, {"Content-Type": "application/json"})
        assert reply.status == 200 and reply.headers["x-model-version"] == "2"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "model 'fraud' version 2 READY on CPUExecutionProvider" in output
    assert "Traceback" not in output


def test_configuration_errors_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "99999"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )
    assert done.returncode == 2
    assert "configuration error: port: must be 0-65535" in done.stderr


SLOW = """
max_batch_size = 8
instance_count = 1
[batching]
max_queue_delay_ms = 1
[onnx]
graph_optimization = "disable"
intra_op_threads = 1
"""


def start_slow_server(tmp_path: Path, *flags: str, config: str = SLOW) -> tuple[subprocess.Popen[str], int]:
    """``tensorgate serve`` over one model that takes ~0.25 s a call (here), one instance."""
    write_model(tmp_path / "models", "slow", 1, slow_matmul(), config=config)
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--repository", str(tmp_path / "models")]
    command += ["--port", str(port), "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "log")]
    process = subprocess.Popen(
        [*command, *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=60)
    except TimeoutError:
        process.kill()
        raise
    return process, port


def slow_infer(port: int, value: float) -> tuple[int, object]:
    body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]})
    reply = request(port, "POST", "/v2/models/slow/infer", body, {"Content-Type": "application/json"}, timeout_s=30)
    return reply.status, reply.json()


def wait_inflight(port: int, count: int, timeout_s: float = 20.0) -> None:
    """Wait until the server reports ``count`` inference requests in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = request(port, "GET", "/metrics").body.decode()
        found = re.search(r"^tensorgate_inflight_requests (\S+)$", text, re.MULTILINE)
        if found and float(found.group(1)) >= count:
            return
        time.sleep(0.02)
    raise TimeoutError(f"never {count} requests in flight")


def test_sigterm_answers_every_request_in_flight_and_queued_then_exits_0(tmp_path: Path) -> None:
    process, port = start_slow_server(tmp_path, "--graceful-timeout-s", "20")
    try:
        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(slow_infer, port, float(i)) for i in range(6)]
            wait_inflight(port, 6)  # one batch runs, the rest wait for the instance
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            results = [f.result() for f in pending]
        output, _ = process.communicate(timeout=30)
        drain_s = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert [status for status, _ in results] == [200] * 6
    for i, (_, doc) in enumerate(results):
        assert doc["outputs"][0]["data"] == [float(i)] * 4  # type: ignore[index]
    assert process.returncode == 0 and drain_s < 20
    assert "draining" in output and "Traceback" not in output
    records = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)  # JSON logs
    # The prediction log was flushed before the exit: one record per request.
    logged = prediction_log(tmp_path / "log")
    assert sorted(r["inputs"]["INPUT0"]["data"][0] for r in logged) == [float(i) for i in range(6)]
    assert all(r["status"] == 200 and r["model"] == "slow" and r["version"] == "1" for r in logged)


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    # No batching: the 8 requests run one after another, seconds of work that the drain would
    # wait for (with batching they ran in two calls, and a fast machine finished the drain, and
    # exited, before the second signal came).
    unbatched = SLOW.replace("max_batch_size = 8", "max_batch_size = 0").replace(
        "[batching]\nmax_queue_delay_ms = 1\n", ""
    )
    process, port = start_slow_server(tmp_path, "--graceful-timeout-s", "60", config=unbatched)
    try:
        with ThreadPoolExecutor(8) as pool:
            for i in range(8):
                pool.submit(slow_infer, port, float(i))
            wait_inflight(port, 8)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=10)
            assert time.monotonic() - started < 2.0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1 and "during the drain: exiting at once" in output


def test_every_setting_is_a_flag_and_bad_values_are_named() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for name in setting_types():
        assert "--" + name.replace("_", "-") in help_text, name
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--max-concurrent-requests", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "max_concurrent_requests: must be at least 1" in bad.stderr
    env = {**os.environ, "TENSORGATE_ACCESS_LOG": "maybe"}
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "TENSORGATE_ACCESS_LOG: access_log: expected bool" in bad.stderr


def test_the_example_config_and_the_docs_name_every_setting() -> None:
    settings = load_settings(ROOT / "examples" / "tensorgate.toml", environ={})
    assert settings.repository == ROOT / "examples" / "models" and settings.port == 8000
    example = (ROOT / "examples" / "tensorgate.toml").read_text()
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for name in setting_types():
        assert f"\n{name} = " in example or f"# {name} = " in example, name
        assert f"| `{name}` | `--{name.replace('_', '-')}`, `TENSORGATE_{name.upper()}` |" in docs, name


# -- start-up cost of the command line (issue 13, item 12) ---------------------------------------

#: What the admin commands and --help must not import: each costs 50 ms to half a second.
HEAVY = ("numpy", "scipy", "onnx", "onnxruntime", "starlette", "uvicorn", "prometheus_client", "tritonclient")

_IMPORTS = """
import json, sys
from gateway.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["route", "--help"],
        ["route", "set", "--help"],
        ["models", "--help"],
        ["history", "--help"],
        ["drift", "--help"],
        ["models"],  # no token: an error, but after parsing and dispatch
        ["route", "get", "fraud", "--url", "http://127.0.0.1:9"],
        ["drift", "--model", "m", "--reference", "/nonexistent"],  # a usage error needs no numpy either
    ],
)
def test_the_command_line_imports_nothing_heavy(argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_ADMIN_TOKEN"}
    done = subprocess.run([sys.executable, "-c", _IMPORTS, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env, check=True)  # fmt: skip
    imported = set(orjson.loads(done.stdout.strip().splitlines()[-1]))
    assert imported.isdisjoint(HEAVY), sorted(imported.intersection(HEAVY))


def test_every_subcommand_help_has_an_example_and_read_only_ones_take_no_audit_options() -> None:
    def help_of(*argv: str) -> str:
        return subprocess.run([sys.executable, "-m", "gateway", *argv, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=True).stdout  # fmt: skip

    for command in (["serve"], ["models"], ["load"], ["unload"], ["route"], ["route", "get"], ["route", "set"],
                    ["swap"], ["rollback"], ["history"], ["drift"]):  # fmt: skip
        text = help_of(*command)
        assert "example" in text and f"tensorgate {' '.join(command)}" in text.split("example")[1], command
    for read_only in (["models"], ["route", "get"], ["history"]):
        text = help_of(*read_only)
        assert "--actor" not in text and "--reason" not in text, read_only
    for changing in (["load"], ["unload"], ["route", "set"], ["swap"], ["rollback"]):
        text = help_of(*changing)
        assert "--actor" in text and "--reason" in text, changing
