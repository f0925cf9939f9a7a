"""The multi-process host's lifecycle with real processes: supervisor, engine, workers (issue 15)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import orjson
import pytest

from tests.host import ROOT, Host, children_of, serve_host
from tests.onnx_models import add_sub, slow_matmul, write_model
from tests.rawhttp import request

JSON = {"Content-Type": "application/json"}
ADD_SUB_BODY = orjson.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
)
#: One call takes a good fraction of a second here (tests/onnx_models.py slow_matmul), one at a
#: time: requests stay in flight long enough for a signal to arrive while they run.
SLOW = """
max_batch_size = 0
instance_count = 1
[onnx]
graph_optimization = "disable"
intra_op_threads = 1
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository with ``simple`` (add_sub: instant) and ``slow``."""
    root = tmp_path / "models"
    write_model(root, "simple", 1, add_sub())
    write_model(root, "slow", 1, slow_matmul(), config=SLOW)
    return root


def infer(port: int, model: str = "simple", value: float = 1.0, timeout_s: float = 60.0) -> tuple[int, object]:
    """One inference request on a fresh connection: (status, JSON body)."""
    if model == "simple":
        body = ADD_SUB_BODY
    else:
        body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]})
    reply = request(port, "POST", f"/v2/models/{model}/infer", body, JSON, timeout_s=timeout_s)
    return reply.status, reply.json()


def served_by(host: Host) -> dict[int, int]:
    """Inference requests answered so far, by the pid of the worker that answered (access log)."""
    counts: dict[int, int] = {}
    for record in host.records():
        if record.get("logger") == "tensorgate.access" and "/infer" in str(record.get("path")):
            counts[record["pid"]] = counts.get(record["pid"], 0) + 1
    return counts


def logged(host: Host, count: int) -> bool:
    """Whether the workers logged ``count`` inference requests."""
    return sum(served_by(host).values()) >= count


def host_inflight(port: int, count: int, timeout_s: float = 60.0) -> None:
    """Wait until the host has ``count`` inference requests in flight.

    Read from /metrics: a host-wide sum when the worker merges its peers' figures, else one
    worker's own; then the latest reading per worker (told apart by process_start_time_seconds)
    is summed.
    """
    latest: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = request(port, "GET", "/metrics").body.decode()
        inflight = re.search(r"^tensorgate_inflight_requests (\S+)$", text, re.MULTILINE)
        started = re.search(r"^process_start_time_seconds (\S+)$", text, re.MULTILINE)
        if inflight:
            latest[started.group(1) if started else ""] = float(inflight.group(1))
            if sum(latest.values()) >= count:
                return
        time.sleep(0.02)
    raise TimeoutError(f"never {count} requests in flight (saw {latest})")


def test_two_workers_both_serve_and_each_is_a_process_of_its_own(repository: Path) -> None:
    with serve_host(repository, workers=2, access_log=True) as host:
        children = host.children()
        gpus = [r for r in children if r.startswith("engine-cuda")]  # one engine per GPU, where there are any
        assert sorted(children) == sorted(["engine-cpu", "worker-0", "worker-1", *gpus])
        assert len(set(children.values())) == len(children) and host.process.pid not in children.values()
        # The supervisor serves nothing: it has not loaded ONNX Runtime (nor the server's memory).
        assert "onnxruntime" not in Path(f"/proc/{host.process.pid}/maps").read_text()
        # Concurrent clients on fresh connections: the shared accept queue hands them to both.
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: infer(host.port), range(200)))
        assert all(status == 200 for status, _ in results)
        assert results[0][1]["outputs"][0]["data"] == list(range(1, 17))  # type: ignore[index]
        workers = set(host.pids("worker").values())
        host.wait_until(lambda: sum(served_by(host).values()) >= 200, "200 access records")
        # Both workers served, nobody else did. How evenly is the kernel's and the workers' loops'
        # business (one shared accept queue: a busy machine can hand a worker nearly everything,
        # seen 196/4), so up to 1,000 more requests until each worker has answered some.
        for _ in range(5):
            if set(served_by(host)) == workers:
                break
            expected = sum(served_by(host).values()) + 200
            with ThreadPoolExecutor(8) as pool:
                assert all(status == 200 for status, _ in pool.map(lambda _: infer(host.port), range(200)))
            host.wait_until(partial(logged, host, expected), "access records")
        counts = served_by(host)
        assert set(counts) == workers, counts
        status = host.stop()
    assert status == 0
    events = [r.get("event") for r in host.records() if r.get("logger") == "gateway.host.supervisor"]
    assert events[0] == "host_start" and events[-1] == "host_stop"
    assert b"Traceback" not in (host.final_log or b"")


def test_sigterm_drains_every_worker_with_no_lost_request_then_exits_0(repository: Path) -> None:
    with serve_host(repository, workers=2, graceful_timeout_s=60) as host:
        children = host.children()
        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(infer, host.port, "slow", float(i)) for i in range(6)]
            host_inflight(host.port, 6)
            host.process.send_signal(signal.SIGTERM)
            results = [f.result() for f in pending]
        status = host.wait_exit(90)
        assert [s for s, _ in results] == [200] * 6
        for i, (_, doc) in enumerate(results):
            assert doc["outputs"][0]["data"] == [float(i)] * 4  # type: ignore[index]
        assert status == 0
        for pid in children.values():  # every child is gone (reaped by the supervisor)
            assert not Path(f"/proc/{pid}").exists()
        records = host.records()
        # Workers drained before the engine stopped: every worker's last line precedes the engine's.
        order = [r.get("process") for r in records if r.get("process")]
        last = {process: len(order) - 1 - order[::-1].index(process) for process in set(order)}
        assert max(last["worker-0"], last["worker-1"]) < last["engine-cpu"], order[-10:]
        assert records[-1].get("event") == "host_stop"
        # New connections are refused once the host stopped, not left waiting in a queue.
        with pytest.raises(ConnectionRefusedError):
            request(host.port, "GET", "/v2/health/live", timeout_s=5)


def test_a_worker_signalled_directly_as_well_still_drains(repository: Path) -> None:
    """A stop that signals the workers as well as the supervisor (as a process-group kill does):
    the supervisor's own SIGTERM then reaches workers already draining, which must not cut the
    drain short (a single process exits at once on a second signal; a worker leaves that to its
    supervisor)."""
    with serve_host(repository, workers=2, graceful_timeout_s=60) as host:
        workers = host.pids("worker")
        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(infer, host.port, "slow", float(i)) for i in range(6)]
            host_inflight(host.port, 6)
            for pid in workers.values():
                os.kill(pid, signal.SIGTERM)
            host.process.send_signal(signal.SIGTERM)
            results = [f.result() for f in pending]
        status = host.wait_exit(90)
        assert [s for s, _ in results] == [200] * 6
        assert status == 0
        assert not [r for r in host.records() if "exiting at once" in str(r.get("message"))]


def test_a_killed_worker_is_replaced_within_a_second_while_the_other_serves(repository: Path) -> None:
    with serve_host(repository, workers=2, access_log=True) as host:
        before = host.pids("worker")
        errors: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    status, doc = infer(host.port)
                    if status != 200:
                        errors.append(str(doc))
                except OSError as exc:  # a request the killed worker had accepted dies with it
                    # Its text only: the exception's traceback would hold this frame, and the
                    # socket, in a cycle that outlives the test (a ResourceWarning at exit).
                    errors.append(repr(exc))

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            host.wait_until(lambda: sum(served_by(host).values()) >= 20, "traffic flowing")
            os.kill(before["worker-0"], signal.SIGKILL)
            killed_at = time.monotonic()
            old = before["worker-0"]
            host.wait_until(lambda: host.pids("worker").get("worker-0") not in (None, old), "a new worker-0")
            replaced_s = time.monotonic() - killed_at
            served = sum(served_by(host).values())
            # While the replacement starts (it loads its models), the other worker serves alone.
            host.wait_until(lambda: sum(served_by(host).values()) >= served + 20, "serving after the kill")
            after = host.wait_workers_loaded()
            counted = served_by(host)
            host.wait_until(lambda: served_by(host).get(after["worker-0"], 0) > 0, "the new worker-0 serving")
        finally:
            stop.set()
            thread.join(timeout=60)
        assert after["worker-1"] == before["worker-1"]  # the other worker was left alone
        assert counted.get(before["worker-1"], 0) > 0
        # At most the one request the killed worker was answering failed; no refused connection.
        assert len(errors) <= 1, errors
        # The replacement accepts only once its models loaded: no "loading" answers meanwhile.
        assert not any("loading" in e for e in errors), errors
        assert not any("ConnectionRefusedError" in e for e in errors), errors
        exits = [r for r in host.records() if r.get("event") == "worker_exit"]
        assert len(exits) == 1 and exits[0]["process"] == "worker-0" and exits[0]["status"] == -signal.SIGKILL
        assert exits[0]["restart_in_s"] == 0
        start = [r for r in host.records() if r.get("event") == "process_start" and r["pid"] == after["worker-0"]]
        assert start, "no start record for the new worker-0"
        assert replaced_s < 30  # the wall clock of a loaded CI box; the supervisor's own figure below
        assert _ts(start[0]) - _ts(exits[0]) < 1.0
        assert host.stop() == 0


def test_a_killed_engine_is_restarted(repository: Path) -> None:
    with serve_host(repository, workers=2) as host:
        engine = host.pids("engine")["engine-cpu"]
        os.kill(engine, signal.SIGKILL)
        host.wait_until(lambda: host.pids("engine").get("engine-cpu") not in (None, engine), "a new engine-cpu")
        exits = [r for r in host.records() if r.get("event") == "engine_exit"]
        assert exits and exits[0]["pid"] == engine
        assert host.stop() == 0


def test_the_children_die_with_a_killed_supervisor(repository: Path) -> None:
    from gateway.host.roles import shared_memory_dir
    from gateway.host.rundirs import sweep_run_dirs

    with serve_host(repository, workers=2) as host:
        children = host.children()
        (start,) = [r for r in host.records() if r.get("event") == "host_start"]
        run_dir = Path(start["run_dir"])
        assert run_dir not in sweep_run_dirs() and run_dir.is_dir()  # a running host's: locked, kept
        os.kill(host.process.pid, signal.SIGKILL)
        host.process.wait(timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(pid) for pid in children.values()):
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in children.values())
        # A killed supervisor cannot remove its run directory: the next host's supervisor does.
        assert run_dir.name.startswith("tg-") and run_dir.is_dir() and shared_memory_dir(run_dir).is_dir()
        assert run_dir in sweep_run_dirs()
        assert not run_dir.exists() and not shared_memory_dir(run_dir).exists()


def test_a_sweep_leaves_what_is_not_a_run_directory(tmp_path: Path) -> None:
    from gateway.host.rundirs import LOCK, make_run_dir, sweep_run_dirs

    (tmp_path / "tg-other").mkdir()  # no lock file: somebody else's
    (tmp_path / "tg-file").write_text("x")
    (tmp_path / "tg-theirs").mkdir()  # another program's lock file, held by nobody: still not ours
    (tmp_path / "tg-theirs" / LOCK).write_text("pid 1234\n")
    live = subprocess.Popen(  # a host's run directory, its lock held by a live process
        [sys.executable, "-c", "import sys, time; from gateway.host.rundirs import make_run_dir; "
         "print(make_run_dir()[0], flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        assert live.stdout is not None
        held = Path(live.stdout.readline().strip())
        assert (held / LOCK).is_file() and sweep_run_dirs(tmp_path) == []
        child = subprocess.Popen(  # a child of that host, still draining after its supervisor died
            [sys.executable, "-c", "import sys, time; from pathlib import Path; "
             "from gateway.host.rundirs import hold_run_dir; hold_run_dir(Path(sys.argv[1])); "
             "print('held', flush=True); time.sleep(60)", str(held)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        live.kill()
        live.wait(10)
        assert sweep_run_dirs(tmp_path) == [] and held.is_dir()
        child.kill()
        child.wait(10)
        child.stdout.close()
        assert sweep_run_dirs(tmp_path) == [held] and not held.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tg-file", "tg-other", "tg-theirs"]
    finally:
        live.kill()
        live.wait(10)
        assert live.stdout is not None
        live.stdout.close()
    mine, fd = make_run_dir()  # held by this very process (another open file description)
    try:
        assert mine not in sweep_run_dirs() and mine.exists()
    finally:
        os.close(fd)
    assert mine in sweep_run_dirs() and not mine.exists()


def test_a_second_signal_kills_every_process_at_once(repository: Path) -> None:
    with serve_host(repository, workers=2, graceful_timeout_s=120) as host:
        children = host.children()
        with ThreadPoolExecutor(6) as pool:
            for i in range(6):
                pool.submit(_ignore, infer, host.port, "slow", float(i))
            host_inflight(host.port, 2)
            host.process.send_signal(signal.SIGTERM)
            host.wait_until(lambda: any(r.get("event") == "host_drain" for r in host.records()), "the drain")
            started = time.monotonic()
            host.process.send_signal(signal.SIGTERM)
            status = host.wait_exit(30)
            took = time.monotonic() - started
        assert status == 1 and took < 20
        assert not any(_alive(pid) for pid in children.values())


def test_one_worker_with_the_engine_and_an_admin_port(repository: Path) -> None:
    with serve_host(repository, workers=1, engine=True, admin_listener=True) as host:
        assert {"engine-cpu", "worker-0"} == {r for r in host.children() if not r.startswith("engine-cuda")}
        assert infer(host.port)[0] == 200
        # Both inherited sockets serve what they serve in one process: the admin API on its own port.
        assert request(host.admin_port, "GET", "/v2/repository/index").status == 401  # asks for the token
        assert request(host.port, "POST", "/v2/repository/index").status == 404
        assert host.stop() == 0


def test_a_busy_chosen_grpc_port_stops_the_supervisor_with_status_3_before_any_child(repository: Path) -> None:
    import socket

    with socket.socket() as busy:  # a gRPC port taken by another program (without SO_REUSEPORT)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with serve_host(repository, workers=2, ready=False, grpc_port=busy.getsockname()[1]) as host:
            status = host.wait_exit(120)
            assert status == 3, host.tail()
            (line,) = [r for r in host.records() if r.get("event") == "host_fail"]
            assert "cannot listen for gRPC" in line["message"], line
            # The workers would have joined the port with SO_REUSEPORT: none was started.
            assert not [r for r in host.records() if r.get("event") == "host_start"]


def _listening_sockets(port: int) -> int:
    """Sockets listening on ``port`` on this machine (/proc/net/tcp: state 0A is LISTEN)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def test_the_workers_share_the_grpc_port_and_serve_it(repository: Path) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from tests.server import free_port

    grpc_port = free_port()
    with serve_host(repository, workers=2, grpc_port=grpc_port) as host:
        # Each worker listens with a socket of its own on the one port (the kernel spreads
        # connections over them); neither exited because its sibling held the port.
        host.wait_until(lambda: _listening_sockets(grpc_port) == 2, "two gRPC listeners")
        first = dict(host.pids("worker"))
        values = np.arange(16, dtype=np.int32).reshape(1, 16)
        for _ in range(20):  # a fresh channel (connection) each time
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                inputs = [grpcclient.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
                inputs[0].set_data_from_numpy(values)
                inputs[1].set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
                result = client.infer("simple", inputs)
                assert result.as_numpy("OUTPUT0").tolist() == [list(range(1, 17))]
            finally:
                client.close()
        assert host.pids("worker") == first  # nobody restarted
        assert host.stop() == 0


def test_a_busy_port_stops_the_supervisor_with_status_3_before_any_child(repository: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--workers", "2"]
        command += ["--port", str(busy.getsockname()[1]), "--state-dir", str(tmp_path / "state"), "--grpc-port", "0"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    (line,) = [orjson.loads(x) for x in done.stderr.splitlines() if "cannot listen" in x]
    assert line["level"] == "error" and "Address already in use" in line["message"]
    assert "started" not in done.stderr  # no child was started


def test_the_restart_delay_doubles_for_a_child_that_keeps_dying_at_start() -> None:
    from gateway.host.supervisor import MAX_RESTART_DELAY_S, restart_delay

    assert restart_delay(0) == 0.0  # a child that ran for a while: replaced at once
    assert restart_delay(1) == 0.0  # one that died soon after its start, once: at once too
    assert [restart_delay(n) for n in (2, 3, 4)] == [0.1, 0.2, 0.4]
    assert restart_delay(50) == MAX_RESTART_DELAY_S


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "workers: must be auto or 1-256, got 0"),
        ("-2", "workers: must be auto or 1-256, got -2"),
        ("many", "--workers: workers: expected auto or an int, got 'many'"),
        ("2.5", "--workers: workers: expected auto or an int, got '2.5'"),
    ],
)
def test_bad_workers_exit_2_with_one_line(value: str, message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--workers", value, "--allow-empty"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"tensorgate: configuration error: {message}\n"


def test_workers_from_the_environment_and_auto(tmp_path: Path) -> None:
    from gateway.settings import AUTO_WORKERS_CAP, load_settings, usable_cpus

    assert load_settings(None, environ={"TENSORGATE_WORKERS": "3"}).workers == 3
    auto = load_settings(None, environ={"TENSORGATE_WORKERS": "auto"}).workers
    assert auto == min(usable_cpus(), AUTO_WORKERS_CAP) and 1 <= auto <= len(os.sched_getaffinity(0))
    config = tmp_path / "tensorgate.toml"
    config.write_text('workers = "auto"\nengine = true\n')
    settings = load_settings(config, environ={})
    assert settings.workers == auto and settings.engine
    assert load_settings(None, environ={}).workers == 1 and not load_settings(None, environ={}).engine


def test_one_worker_by_default_is_one_process(repository: Path, tmp_path: Path) -> None:
    from tests.server import free_port, wait_for

    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--port", str(port)]
    command += ["--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "log"), "--grpc-port", "0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=60)
        assert infer(port)[0] == 200
        assert children_of(process.pid) == {}  # no supervisor: no worker, no engine
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == process.pid]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "supervisor" not in output


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _ts(record: dict[str, object]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()


def _ignore(function: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(OSError):  # the second signal kills the worker answering it
        function(*args)
