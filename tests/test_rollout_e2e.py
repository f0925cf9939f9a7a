"""Rollouts end to end: real servers, real ONNX models, real traffic, steps of a second or two."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import _model, slow_matmul, write_model
from tests.server import RunningServer, admin, serve

# Every version maps INPUT0 FP32 [batch, 4] to OUTPUT0 FP32 [batch, 4], so one client fits all.
CONFIG = """
[onnx]
graph_optimization = "disable"
intra_op_threads = 1
"""
#: A value past this makes the failing candidate fail (a 500: ONNX Runtime cannot allocate).
POISON = 500.0


def identity() -> onnx.ModelProto:
    """OUTPUT0 = INPUT0, at once."""
    return slow_matmul(size=2, repeats=1)


def negate() -> onnx.ModelProto:
    """OUTPUT0 = -INPUT0: every row's argmax moves, so its answers disagree with identity's."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["INPUT0"], ["OUTPUT0"])],
        "negate",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
    )
    return _model(graph)


def fails_past(limit: float) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0, unless a value passes ``limit``: then it asks for 16 TiB and fails (a 500)."""
    nodes = [
        helper.make_node("ReduceMax", ["INPUT0"], ["highest"], keepdims=0),
        helper.make_node("Greater", ["highest", "limit"], ["flag"]),
        helper.make_node("Cast", ["flag"], ["one"], to=TensorProto.INT64),
        helper.make_node("Mul", ["one", "huge"], ["size"]),
        helper.make_node("ConstantOfShape", ["size"], ["blob"]),
        helper.make_node("ReduceSum", ["blob"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["INPUT0", "nothing"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fails_past",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(np.array([1 << 42], dtype=np.int64), "huge"),
            numpy_helper.from_array(np.array(limit, dtype=np.float32), "limit"),
            numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero"),
        ],
    )
    return _model(graph)


@dataclass
class Sent:
    at: float
    status: int
    version: str


class Traffic:
    """One client sending requests in a loop on a keep-alive connection; ``poison`` of them fail on 'failing'."""

    def __init__(self, server: RunningServer, model: str = "m", poison: float = 0.0) -> None:
        self.server, self.model, self.poison = server, model, poison
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = random.Random(7)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        while not self._stop.is_set():
            row = [self._rng.random() for _ in range(4)]
            if self._rng.random() < self.poison:
                row[0] = POISON * 2
            body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": row}]})
            at = time.time()
            connection.request("POST", f"/v2/models/{self.model}/infer", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            self.sent.append(Sent(at, response.status, response.getheader("x-model-version") or ""))
        connection.close()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def repository(root: Path, candidate: onnx.ModelProto) -> tuple[Path, onnx.ModelProto]:
    write_model(root, "m", 1, identity(), config=CONFIG)
    return root, candidate


@contextmanager
def gateway(repo: tuple[Path, onnx.ModelProto], state: Path) -> Iterator[RunningServer]:
    """Serve version 1; the candidate, version 2, lands in the repository once it serves (as a pipeline's would)."""
    root, candidate = repo
    with serve(root, state_dir=state, strict_readiness=False) as server:
        if not (root / "m" / "2").exists():
            write_model(root, "m", 2, candidate)
        yield server


def start(server: RunningServer, spec: dict[str, Any], model: str = "m") -> dict[str, Any]:
    reply = admin(server, "POST", f"/admin/models/{model}/rollouts", spec)
    assert reply.status == 201, reply.body
    doc: dict[str, Any] = reply.json()  # type: ignore[assignment]
    return doc


def current(server: RunningServer, model: str = "m") -> dict[str, Any]:
    reply = admin(server, "GET", f"/admin/models/{model}/rollouts/current")
    assert reply.status == 200, reply.body
    doc: dict[str, Any] = reply.json()  # type: ignore[assignment]
    return doc


def wait_phase(server: RunningServer, phases: set[str], timeout_s: float = 90.0, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = current(server)
        if doc["phase"] in phases and all(doc[k] == v for k, v in match.items()):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"the rollout never reached {phases} {match}: {current(server)}")


def history(server: RunningServer) -> list[dict[str, Any]]:
    doc: Any = admin(server, "GET", "/admin/models/m/history").json()
    return list(doc["history"])


def route(server: RunningServer) -> dict[str, Any]:
    doc: Any = admin(server, "GET", "/admin/models/m/route").json()
    return dict(doc)


FAST = {"interval_s": 0.5, "min_requests": 5}


def test_a_healthy_candidate_shadows_steps_and_is_promoted(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", identity())
    with gateway(root, tmp_path / "state") as server, Traffic(server) as traffic:
        spec = {
            "to": "2",
            "shadow_first": {"fraction": 1.0, "duration_s": 1},
            "steps": [{"weight": 25, "pause_s": 1}, {"weight": 50, "pause_s": 1}],
            # The same model on both sides: a ratio only a stalled CI machine could reach, and
            # failures tolerated (an event-loop stall on a loaded 2-core runner is not a verdict).
            "analysis": {
                **FAST,
                "max_error_rate": 0.01,
                "max_p99_ratio": 1000,
                "min_shadow_agreement": 0.99,
                "failure_limit": 3,
            },
            "reason": "weekly retrain",
        }
        doc = start(server, spec)
        assert doc["phase"] == "shadowing" and doc["to"] == "2" and doc["from"] == "1"
        done = wait_phase(server, {"promoted", "aborted"})
        assert done["phase"] == "promoted", done["message"]
        assert route(server)["weights"] == {"2": 100}
        models: Any = admin(server, "GET", "/admin/models").json()
        assert models["models"][0]["standby"] == "1"  # the old primary stays loaded for a rollback
        assert done["last_analysis"]["verdict"] == "pass"
        checks = {c["name"]: c for c in done["last_analysis"]["checks"]}
        assert checks["error_rate"]["threshold"] == 0.01 and checks["error_rate"]["value"] == 0.0
        assert checks["p99_ratio"]["value"] is not None
        entries = history(server)
    assert {s.status for s in traffic.sent} == {200}
    assert {s.version for s in traffic.sent} == {"1", "2"}
    actions = [e.get("rollout_action") for e in entries if "rollout" in e]
    assert actions[0] == "rollout-start" and actions[-1] == "rollout-promote"
    assert {"rollout-shadow", "rollout-step", "rollout-analysis"} <= set(actions)
    shadow_entry = next(e for e in entries if e.get("rollout_action") == "rollout-shadow")
    assert shadow_entry["after"]["shadow"] == {"2": 1.0}
    analysis = next(e for e in entries if e.get("rollout_action") == "rollout-analysis")
    assert analysis["analysis"]["checks"] and analysis["decision"] in ("continue", "advance", "hold")


def test_a_failing_candidate_is_aborted_at_the_first_analysis_and_rolled_back(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", fails_past(POISON))
    with gateway(root, tmp_path / "state") as server, Traffic(server, poison=0.3) as traffic:
        spec = {
            "to": "2",
            "steps": [{"weight": 50, "pause_s": 60}],
            "analysis": {"interval_s": 1.0, "min_requests": 5, "max_error_rate": 0.05},
        }
        started = start(server, spec)
        done = wait_phase(server, {"aborted", "promoted"}, timeout_s=60)
        assert route(server)["weights"] == {"1": 100}  # the route before the rollout, applied
        confirmed = time.time()
        time.sleep(1.0)
        entry = next(e for e in history(server) if e.get("rollout_action") == "rollout-abort")
    assert done["phase"] == "aborted" and "error_rate" in done["message"]
    assert done["analyses"] == 1  # within one interval: the first window was enough
    assert done["ended_at"] - started["started_at"] < 1.0 + 5.0  # interval + generous slack on a loaded CI
    errors = [s for s in traffic.sent if s.status >= 500]
    assert errors  # the candidate's 500s (an error answer names no version)
    after = [s for s in traffic.sent if s.at > confirmed]
    assert after and all(s.status == 200 and s.version == "1" for s in after)
    assert entry["after"]["weights"] == {"1": 100} and "error_rate" in entry["why"]


TIMEOUTS = """
max_batch_size = 1
instance_count = 1
[batching]
max_queue_delay_ms = 0
timeout_ms = 10
[onnx]
graph_optimization = "disable"
intra_op_threads = 1
"""


def test_a_candidate_whose_requests_time_out_is_aborted_504s_count(tmp_path: Path) -> None:
    # One instance, a 10 ms queue deadline: behind a slow candidate's call, requests get 504.
    root = tmp_path / "models"
    write_model(root, "m", 1, identity(), config=TIMEOUTS)
    spec = {"to": "2", "steps": [{"weight": 50, "pause_s": 60}],
            "analysis": {"interval_s": 1.0, "min_requests": 5, "max_error_rate": 0.05}}  # fmt: skip
    with (
        gateway((root, slow_matmul(size=384, repeats=4)), tmp_path / "state") as server,
        Traffic(server) as one,
        Traffic(server) as two,
        Traffic(server) as three,
    ):
        start(server, spec)
        done = wait_phase(server, {"aborted", "promoted"}, timeout_s=60)
        assert route(server)["weights"] == {"1": 100}
    assert done["phase"] == "aborted" and "error_rate" in done["message"], done["message"]
    statuses = {s.status for s in (*one.sent, *two.sent, *three.sent)}
    assert 504 in statuses and statuses <= {200, 504}


def test_a_slower_candidate_trips_the_latency_ratio(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", slow_matmul(size=384, repeats=4))
    with gateway(root, tmp_path / "state") as server, Traffic(server):
        spec = {
            "to": "2",
            "steps": [{"weight": 50, "pause_s": 60}],
            "analysis": {"interval_s": 1.0, "min_requests": 5, "max_p99_ratio": 2.0, "max_error_rate": 0.01},
        }
        start(server, spec)
        done = wait_phase(server, {"aborted", "promoted"}, timeout_s=60)
        assert route(server)["weights"] == {"1": 100}
    assert done["phase"] == "aborted" and "p99_ratio" in done["message"], done["message"]
    ratio = next(c for c in done["last_analysis"]["checks"] if c["name"] == "p99_ratio")
    assert ratio["value"] > 2.0 and ratio["ok"] is False


def test_a_disagreeing_candidate_is_stopped_before_it_gets_traffic(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", negate())
    with gateway(root, tmp_path / "state") as server, Traffic(server) as traffic:
        spec = {
            "to": "2",
            "shadow_first": {"fraction": 1.0, "duration_s": 60},
            "steps": [{"weight": 50, "pause_s": 1}],
            "analysis": {**FAST, "min_shadow_agreement": 0.95},
        }
        start(server, spec)
        done = wait_phase(server, {"aborted", "promoted"}, timeout_s=60)
        entries = history(server)
    assert done["phase"] == "aborted" and "shadow_agreement" in done["message"]
    assert done["step"] == -1  # still shadowing
    agreement = next(c for c in done["last_analysis"]["checks"] if c["name"] == "shadow_agreement")
    assert agreement["value"] < 0.95
    assert {s.version for s in traffic.sent} == {"1"}  # no client ever got an answer of version 2
    assert not any(e["after"] and e["after"]["weights"].get("2") for e in entries)


def test_pause_resume_abort_and_a_manual_route_change_pauses(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", identity())
    with gateway(root, tmp_path / "state") as server, Traffic(server):
        spec = {"to": "2", "steps": [{"weight": 10, "pause_s": 600}], "analysis": FAST}
        start(server, spec)
        second = admin(server, "POST", "/admin/models/m/rollouts", spec)
        assert second.status == 409 and "already has a rollout" in second.json()["error"]  # type: ignore[index]
        paused = admin(server, "POST", "/admin/models/m/rollouts/current/pause", {"reason": "dashboard"})
        assert paused.status == 200 and paused.json()["phase"] == "paused"  # type: ignore[index]
        assert route(server)["weights"] == {"1": 90, "2": 10}  # paused keeps the weights
        resumed: Any = admin(server, "POST", "/admin/models/m/rollouts/current/resume").json()
        assert resumed["phase"] == "progressing"
        assert admin(server, "POST", "/admin/models/m/rollouts/current/resume").status == 409
        assert admin(server, "POST", "/admin/models/m/rollouts/current/dance").status == 404
        # A person changes the route by hand: the rollout pauses rather than fight them.
        put = admin(server, "PUT", "/admin/models/m/route", {"weights": {"1": 80, "2": 20}})
        assert put.status == 200
        doc = wait_phase(server, {"paused"}, timeout_s=30)
        assert "manual route change" in doc["message"]
        assert route(server)["weights"] == {"1": 80, "2": 20}
        # Resuming hands the wheel back: the rollout's own weights again.
        resumed = admin(server, "POST", "/admin/models/m/rollouts/current/resume").json()
        assert resumed["phase"] == "progressing" and route(server)["weights"] == {"1": 90, "2": 10}
        aborted: Any = admin(server, "POST", "/admin/models/m/rollouts/current/abort", {"reason": "enough"}).json()
        assert aborted["phase"] == "aborted" and route(server)["weights"] == {"1": 100}
        assert admin(server, "POST", "/admin/models/m/rollouts/current/promote").status == 409
        assert current(server)["phase"] == "aborted"  # the last rollout stays readable
        again = admin(server, "POST", "/admin/models/m/rollouts", spec)
        assert again.status == 201  # the model is free again
        promoted: Any = admin(server, "POST", "/admin/models/m/rollouts/current/promote").json()
        assert promoted["phase"] == "promoted" and route(server)["weights"] == {"2": 100}


def test_bad_requests_and_a_model_without_rollouts(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", identity())
    with gateway(root, tmp_path / "state") as server:
        missing = admin(server, "GET", "/admin/models/m/rollouts/current")
        assert missing.status == 404 and "no rollout" in missing.json()["error"]  # type: ignore[index]
        assert admin(server, "GET", "/admin/models/nope/rollouts/current").status == 404
        bad = admin(server, "POST", "/admin/models/m/rollouts", {"to": "2", "steps": [{"weight": 500}]})
        assert bad.status == 400 and "weight" in bad.json()["error"]  # type: ignore[index]
        assert admin(server, "POST", "/admin/models/m/rollouts", [1, 2]).status == 400
        odd_spec = {"to": "2", "analysis": "fast", "steps": [{"weight": 5}]}
        odd = admin(server, "POST", "/admin/models/m/rollouts", odd_spec)
        assert odd.status == 400 and "analysis" in odd.json()["error"]  # type: ignore[index]
        assert admin(server, "POST", "/admin/models/m/rollouts", {"to": "9", "steps": [{"weight": 5}]}).status == 404
        primary = admin(server, "POST", "/admin/models/m/rollouts", {"to": "1", "steps": [{"weight": 5}]})
        assert primary.status == 409
        assert admin(server, "POST", "/admin/models/m/rollouts/current/pause").status == 404
        unauthorised = admin(server, "GET", "/admin/models/m/rollouts/current", headers={})
        assert unauthorised.status == 401


def test_a_rollout_survives_a_restart_and_resumes_its_step(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", identity())
    state = tmp_path / "state"
    spec = {"to": "2", "steps": [{"weight": 20, "pause_s": 600}, {"weight": 50, "pause_s": 1}], "analysis": FAST}
    with gateway(root, state) as server:
        first = start(server, spec)
    assert (state / "rollouts.json").exists()
    with gateway(root, state) as server:
        doc = wait_phase(server, {"progressing"}, timeout_s=30, message="resumed after a restart at step 1")
        assert doc["id"] == first["id"] and doc["step"] == 0 and doc["stage_started_at"] > first["stage_started_at"]
        assert route(server)["weights"] == {"1": 80, "2": 20}
        assert any(e.get("rollout_action") == "rollout-restart" for e in history(server))
        promoted: Any = admin(server, "POST", "/admin/models/m/rollouts/current/promote").json()
        assert promoted["phase"] == "promoted"
    with gateway(root, state) as server:
        assert current(server)["phase"] == "promoted"  # ended rollouts are kept too
        assert route(server)["weights"] == {"2": 100}


@pytest.mark.parametrize("action", ["pause", "abort"])
def test_control_without_a_running_rollout_is_409_after_the_end(tmp_path: Path, action: str) -> None:
    root = repository(tmp_path / "models", identity())
    with gateway(root, tmp_path / "state") as server:
        start(server, {"to": "2", "steps": [{"weight": 10, "pause_s": 600}], "analysis": FAST})
        assert admin(server, "POST", "/admin/models/m/rollouts/current/promote").status == 200
        assert admin(server, "POST", f"/admin/models/m/rollouts/current/{action}").status == 409
