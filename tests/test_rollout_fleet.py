"""Rollouts in fleet mode: three gateway processes and a real Redis, one rollout for the fleet (docs/rollouts.md)."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import orjson
import pytest

from gateway.rollouts.analysis import Counters
from gateway.rollouts.figures import fleet_window
from gateway.telemetry.histogram import LATENCY_BUCKETS
from tests.onnx_models import write_model
from tests.redis_server import RedisServer
from tests.test_fleet import Gateway, eventually
from tests.test_rollout_e2e import CONFIG, POISON, fails_past, identity


class Traffic:
    """One client sending requests through one replica in a loop; ``poison`` of them fail on the candidate."""

    def __init__(self, gateway: Gateway, poison: float = 0.0) -> None:
        self.port, self.poison = gateway.port, poison
        self.statuses: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = random.Random(11)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            row = [self._rng.random() for _ in range(4)]
            if self._rng.random() < self.poison:
                row[0] = POISON * 2
            body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": row}]})
            try:
                connection.request("POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
            except OSError:  # the replica went away: this client stops
                return
            self.statuses.append((response.status, response.getheader("x-model-version") or ""))
        connection.close()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _fleet(tmp_path: Path, store: str, candidate: onnx.ModelProto) -> list[Gateway]:
    root = tmp_path / "models"
    write_model(root, "m", 1, identity(), config=CONFIG)
    write_model(root, "m", 2, candidate)
    return [Gateway(name, root, tmp_path / name, store) for name in ("a", "b", "c")]


def _running(gateways: list[Gateway]) -> Iterator[list[Gateway]]:
    try:
        for gateway in gateways:
            gateway.start()
        a = gateways[0]
        # Every replica starts on its highest version: the fleet's first change puts version 1 in front.
        reply = a.admin("POST", "/admin/models/m/swap?wait=all", {"version": "1", "actor": "ci"})
        assert reply.status == 200, reply.body
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


@pytest.fixture
def failing_fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Gateway]]:
    yield from _running(_fleet(tmp_path, redis_server.url, fails_past(POISON)))


@pytest.fixture
def healthy_fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Gateway]]:
    yield from _running(_fleet(tmp_path, redis_server.url, identity()))


def current(gateway: Gateway) -> dict[str, Any]:
    reply = gateway.admin("GET", "/admin/models/m/rollouts/current")
    assert reply.status == 200, reply.body
    return dict(orjson.loads(reply.body))


def replica(gateway: Gateway) -> str:
    return f"{socket.gethostname()}:{gateway.port}"


def test_one_rollout_for_the_fleet_its_figures_summed_over_replicas(failing_fleet: list[Gateway]) -> None:
    a, b, c = failing_fleet
    spec = {
        "to": "2",
        "steps": [{"weight": 50, "pause_s": 60}],
        "analysis": {"interval_s": 1.0, "min_requests": 5, "max_error_rate": 0.05},
        "actor": "ci",
    }
    reply = a.admin("POST", "/admin/models/m/rollouts", spec)
    assert reply.status == 201, reply.body
    started = orjson.loads(reply.body)
    # The same rollout through every replica, led by the one that took the POST.
    for gateway in failing_fleet:
        doc = current(gateway)
        assert doc["id"] == started["id"] and doc["phase"] == "progressing"
        assert doc["fleet"]["leader"] == replica(a) and doc["fleet"]["replica"] == replica(gateway)
    # One rollout per model for the whole fleet.
    reply = c.admin("POST", "/admin/models/m/rollouts", spec)
    assert reply.status == 409, reply.body
    # Pause through C, seen through B; resume through B.
    reply = c.admin("POST", "/admin/models/m/rollouts/current/pause", {"actor": "ci"})
    assert reply.status == 200, reply.body
    assert current(b)["phase"] == "paused" and current(a)["phase"] == "paused"
    reply = b.admin("POST", "/admin/models/m/rollouts/current/resume", {"actor": "ci"})
    assert reply.status == 200, reply.body
    assert current(a)["phase"] == "progressing"
    # Every replica serves the step (the candidate at 50%) before the bad traffic starts.
    for gateway in failing_fleet:
        eventually(lambda g=gateway: g.route()["weights"] == {"1": 50, "2": 50}, timeout_s=60)
    # The failing requests go through B only: A, the leader, sees them in the fleet's sum alone.
    with Traffic(b, poison=0.3) as traffic:
        done = eventually(lambda: (d := current(c))["phase"] in ("aborted", "promoted") and d, timeout_s=90)
    assert done["phase"] == "aborted" and "error_rate" in done["message"], done
    assert done["last_analysis"]["requests"] >= 5, done["last_analysis"]  # B's requests, counted by A
    assert any(status >= 500 for status, _ in traffic.statuses)
    for gateway in failing_fleet:
        eventually(lambda g=gateway: g.route()["weights"] == {"1": 100}, timeout_s=60)
    entries = orjson.loads(a.admin("GET", "/admin/models/m/history").body)["history"]
    abort = next(e for e in entries if e.get("rollout_action") == "rollout-abort")
    assert abort["replica"] == replica(a)  # the leader carried it out


def test_the_replica_that_starts_a_rollout_holds_its_lease_before_the_fleet_can_see_it(
    healthy_fleet: list[Gateway], redis_server: RedisServer
) -> None:
    """Saved before its lease was taken, a rollout could be taken by another replica's tick in
    between, which logged a restart that never happened (found by a black-box sweep)."""
    import redis

    a, b, _ = healthy_fleet
    client = redis.Redis.from_url(redis_server.url)
    commands: list[str] = []
    with client.monitor() as monitor:

        def record() -> None:
            try:
                for command in monitor.listen():
                    text = str(command.get("command", ""))
                    if "rollout" in text:
                        commands.append(text)
                    if len(commands) > 2000:
                        return
            except (OSError, ValueError, redis.RedisError):  # the monitor's connection closed below
                return

        listener = threading.Thread(target=record, daemon=True)
        listener.start()
        spec = {"to": "2", "steps": [{"weight": 20, "pause_s": 60}], "actor": "ci"}
        reply = a.admin("POST", "/admin/models/m/rollouts", spec)
        assert reply.status == 201, reply.body
        eventually(lambda: any(c.startswith("SET tensorgate:rollout:m ") for c in commands), timeout_s=30)
    client.close()
    lease = next(i for i, c in enumerate(commands) if "rollout-lease:m" in c)
    saved = next(i for i, c in enumerate(commands) if c.startswith("SET tensorgate:rollout:m "))
    assert lease < saved, commands[: saved + 1]
    time.sleep(1.5)  # three ticks of every replica
    assert current(b)["fleet"]["leader"] == replica(a)
    entries = orjson.loads(b.admin("GET", "/admin/models/m/history").body)["history"]
    assert not any(e.get("rollout_action") == "rollout-restart" for e in entries), entries[-3:]
    assert a.admin("POST", "/admin/models/m/rollouts/current/abort", {"actor": "ci"}).status == 200


def test_the_leader_dies_mid_rollout_another_replica_leads_and_promotes(healthy_fleet: list[Gateway]) -> None:
    a, b, c = healthy_fleet
    spec = {
        "to": "2",
        "steps": [{"weight": 20, "pause_s": 4}, {"weight": 50, "pause_s": 2}],
        "analysis": {"interval_s": 1.0, "min_requests": 3, "max_error_rate": 0.05},
        "actor": "ci",
    }
    with Traffic(b), Traffic(c):
        reply = a.admin("POST", "/admin/models/m/rollouts", spec)
        assert reply.status == 201, reply.body
        assert current(b)["fleet"]["leader"] == replica(a)
        eventually(lambda: current(b)["step"] >= 0, timeout_s=30)
        assert a.process is not None
        a.process.kill()  # no goodbye: its lease expires
        killed = time.monotonic()
        a.process.wait(timeout=30)
        a.process = None
        taken = eventually(
            lambda: (d := current(b))["fleet"]["leader"] not in (None, replica(a)) or d["phase"] == "promoted",
            timeout_s=60,  # a lock the dead leader held expires after 30 s
        )
        assert taken
        print(f"leader killed: another replica led after {time.monotonic() - killed:.1f} s")
        done = eventually(lambda: (d := current(c))["phase"] in ("aborted", "promoted") and d, timeout_s=120)
    assert done["phase"] == "promoted", done
    for gateway in (b, c):
        eventually(lambda g=gateway: g.route()["weights"] == {"2": 100}, timeout_s=60)
    entries = orjson.loads(b.admin("GET", "/admin/models/m/history").body)["history"]
    promote = next(e for e in entries if e.get("rollout_action") == "rollout-promote")
    assert promote["replica"] in (replica(b), replica(c))  # carried out by the replica that took over
    assert any(e.get("rollout_action") == "rollout-restart" for e in entries)  # same step, a fresh window


def test_a_manual_change_through_another_replica_pauses_the_fleets_rollout(healthy_fleet: list[Gateway]) -> None:
    a, b, c = healthy_fleet
    spec = {"to": "2", "steps": [{"weight": 10, "pause_s": 60}], "analysis": {"interval_s": 1.0}, "actor": "ci"}
    reply = a.admin("POST", "/admin/models/m/rollouts", spec)
    assert reply.status == 201, reply.body
    eventually(lambda: c.route()["weights"] == {"1": 90, "2": 10}, timeout_s=60)
    # A person moves the route through C: the rollout, led by A, pauses rather than overwrite them.
    reply = c.admin("PUT", "/admin/models/m/route", {"weights": {"1": 70, "2": 30}, "actor": "alice"})
    assert reply.status == 200, reply.body
    paused = eventually(lambda: (d := current(a))["phase"] == "paused" and d, timeout_s=60)
    assert "manual route change" in paused["message"] and "alice" in paused["message"]
    time.sleep(2.0)  # a few of the leader's ticks: the person's route stands
    assert b.route()["weights"] == {"1": 70, "2": 30}
    # Abort through B: the route before the rollout, on every replica.
    reply = b.admin("POST", "/admin/models/m/rollouts/current/abort", {"actor": "ci"})
    assert reply.status == 200, reply.body
    assert current(c)["phase"] == "aborted"
    for gateway in healthy_fleet:
        eventually(lambda g=gateway: g.route()["weights"] == {"1": 100}, timeout_s=60)
    reply = c.admin("POST", "/admin/models/m/rollouts/current/resume", {"actor": "ci"})
    assert reply.status == 409, reply.body


def _counts(requests: int, errors: int) -> Counters:
    latency = [0] * (len(LATENCY_BUCKETS) + 1)
    latency[0] = requests
    return Counters(requests=requests, errors=errors, latency=tuple(latency), bounds=LATENCY_BUCKETS)


def test_a_window_over_the_fleet_sums_each_replicas_own_difference() -> None:
    key = ("m", 2)
    start = {"a/1": {key: _counts(10, 0)}, "b/1": {key: _counts(100, 5)}, "dead/1": {key: _counts(7, 7)}}
    now = {
        "a/1": {key: _counts(30, 1)},  # 20 requests, 1 error
        "b/1": {key: _counts(150, 15)},  # 50 requests, 10 errors
        "b/2": {key: _counts(3, 3)},  # b restarted during the window: from the next one
        "new/1": {key: _counts(9, 0)},  # joined during the window: from the next one
    }  # "dead/1" expired: it drops out
    window = fleet_window(start, now, key)
    assert (window.requests, window.errors) == (70, 11)
    assert window.latency[0] == 70 and sum(window.latency) == 70
    assert fleet_window(start, now, ("m", 1)).requests == 0  # a version nobody published
