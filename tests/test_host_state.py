"""One release state for every worker of a host: the supervisor's host store (gateway/host/state_server.py).

Unit level: the real ZeroMQ server and client in this process (compare-and-set, the routes.json it
writes, a start from a single process's routes.json, change messages, leases, rollouts.json).
End to end: real ``tensorgate serve --workers N`` hosts (tests/host.py): read-your-writes after a
swap through one worker, rollback and history identical from every worker, a restart of the whole
host keeps its routes, and a single-process run afterwards reads the same routes.json.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.host.state_client import HostStateClient
from gateway.host.state_server import ROLLOUTS_FILE, ROLLOUTS_FORMAT, HostStateServer
from gateway.release.history import HistoryEntry
from gateway.release.store import ModelRecord, StateStore
from gateway.state.backend import StoreWriteFailed
from routing.route import Route


def entry(seq: int, actor: str, weights: dict[str, int] | None = None, replica: str | None = None) -> HistoryEntry:
    """A route change's history entry."""
    after = {"weights": weights or {"1": 100}, "seq": seq}
    return HistoryEntry(seq, "2026-12-01T00:00:00+00:00", actor, "route", None, None, after, replica=replica)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def hosted(run_dir: Path, state_dir: Path, clock: Clock | None = None) -> AsyncIterator[HostStateServer]:
    """A started host store, closed at the end."""
    server = HostStateServer(run_dir, state_dir, monotonic=clock or Clock())
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an async scenario with a bound on the whole."""
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_compare_and_set_one_winner_and_the_earlier_history_seeds(run_dir: Path, tmp_path: Path) -> None:
    """A change based on an old seq is refused with the seq the store holds; the first change seeds history."""

    async def scenario() -> None:
        async with hosted(run_dir, tmp_path / "state"):
            a, b = HostStateClient(run_dir), HostStateClient(run_dir)
            try:
                local = [entry(1, "earlier"), entry(2, "earlier"), entry(3, "first", replica="worker-0")]
                first = ModelRecord(Route({1: 100}, 3), local)
                assert await a.model("m") is None
                assert await a.commit("m", 2, first, local[-1], [1], seed=True) is None
                won = ModelRecord(Route({1: 100}, 4), [*local, entry(4, "winner", replica="worker-0")])
                lost = ModelRecord(Route({1: 100}, 4), [*local, entry(4, "loser", replica="worker-1")])
                results = await asyncio.gather(
                    a.commit("m", 3, won, won.history[-1], [1]), b.commit("m", 3, lost, lost.history[-1], [1])
                )
                assert sorted(results, key=str) == [4, None]  # exactly one wins; the other learns the store is at 4
                stored = await b.model("m")
                assert stored is not None and stored.loaded == frozenset({1})
                actors = [e.actor for e in stored.record.history]
                assert actors[:3] == ["earlier", "earlier", "first"] and actors[3] in ("winner", "loser")
                assert len(actors) == 4 and await b.seqs() == {"m": 4}
            finally:
                await a.close()
                await b.close()

    run(scenario)


def test_every_commit_is_in_routes_json_in_todays_format_before_it_answers(run_dir: Path, tmp_path: Path) -> None:
    """routes.json is exactly what a single process's StateStore writes for the same records."""
    state = tmp_path / "state"

    async def scenario() -> None:
        async with hosted(run_dir, state):
            client = HostStateClient(run_dir)
            try:
                history = [entry(1, "a", replica="worker-0")]
                assert await client.commit("m", 0, ModelRecord(Route({1: 100}, 1), history), history[0], [1]) is None
                # Answered: on disk already (no wait), and a single process reads it back.
                records = StateStore(state).load()
                assert list(records) == ["m"] and records["m"].seq == 1
                history.append(entry(2, "b", {"1": 90, "2": 10}, replica="worker-1"))
                route = Route({1: 90, 2: 10}, 2)
                assert await client.commit("m", 1, ModelRecord(route, history), history[-1], [1, 2]) is None
            finally:
                await client.close()
        expected = tmp_path / "expected"
        StateStore(expected).save({"m": ModelRecord(Route({1: 90, 2: 10}, 2), history)})
        assert (state / "routes.json").read_bytes() == (expected / "routes.json").read_bytes()

    run(scenario)


def test_a_start_reads_a_single_process_routes_json_and_goes_on_from_its_seq(run_dir: Path, tmp_path: Path) -> None:
    """The host store starts from what a single process (or its own last run) saved."""
    state = tmp_path / "state"
    saved = [entry(1, "one"), entry(2, "two", {"2": 100})]
    StateStore(state).save({"m": ModelRecord(Route({2: 100}, 2), saved)})

    async def scenario() -> None:
        async with hosted(run_dir, state):
            client = HostStateClient(run_dir)
            try:
                stored = await client.model("m")
                assert stored is not None
                assert stored.record.route.to_json() == Route({2: 100}, 2).to_json()
                assert [e.actor for e in stored.record.history] == ["one", "two"]
                stale = ModelRecord(Route({1: 100}, 2), [*saved[:1], entry(2, "stale")])
                assert await client.commit("m", 1, stale, stale.history[-1], []) == 2
                later = ModelRecord(Route({1: 100}, 3), [*saved, entry(3, "three")])
                assert await client.commit("m", 2, later, later.history[-1], []) is None
            finally:
                await client.close()
        # The next start (a restart of the whole host) reads what the last one wrote.
        async with hosted(run_dir, state):
            client = HostStateClient(run_dir)
            try:
                assert await client.seqs() == {"m": 3}
            finally:
                await client.close()

    run(scenario)


def test_a_change_is_published_to_every_subscriber(run_dir: Path, tmp_path: Path) -> None:
    """Each commit sends ``{model, seq, replica}`` on the PUB socket; subscribing yields None first."""

    async def scenario() -> None:
        async with hosted(run_dir, tmp_path / "state"):
            client = HostStateClient(run_dir)
            changes = client.changes()
            try:
                assert await anext(changes) is None  # subscribed
                seen: list[dict[str, Any]] = []
                seq = 0
                # A SUB socket's subscription reaches the PUB a moment after connect: send until one arrives.
                while not seen:
                    seq += 1
                    change = entry(seq, "a", replica="worker-0")
                    record = ModelRecord(Route({1: 100}, seq), [change])
                    assert await client.commit("m", seq - 1, record, change, []) is None
                    try:
                        seen.append(await asyncio.wait_for(anext(changes), 0.5))  # type: ignore[arg-type]
                    except TimeoutError:
                        continue
                assert seen[0]["model"] == "m" and seen[0]["replica"] == "worker-0" and seen[0]["seq"] >= 1
            finally:
                await changes.aclose()  # type: ignore[attr-defined]
                await client.close()

    run(scenario)


def test_leases_locks_and_reports_expire_on_the_stores_clock(run_dir: Path, tmp_path: Path) -> None:
    """Plain keys: set-if-absent, renew and delete by their holder only, expiry; reports are keys too."""
    clock = Clock()

    async def scenario() -> None:
        async with hosted(run_dir, tmp_path / "state", clock):
            client = HostStateClient(run_dir)
            try:
                assert await client.put("rollout-lease:m", b"w0/a", only_new=True, ttl_ms=3000)
                assert not await client.put("rollout-lease:m", b"w1/b", only_new=True, ttl_ms=3000)
                assert not await client.extend("rollout-lease:m", "w1/b", 3000)
                assert not await client.delete("rollout-lease:m", token="w1/b")
                clock.now += 2.0
                assert await client.extend("rollout-lease:m", "w0/a", 3000)  # renewed: 3 s from now
                clock.now += 2.5
                assert await client.get("rollout-lease:m") == b"w0/a"
                clock.now += 1.0  # expired: another takes it
                assert await client.get("rollout-lease:m") is None
                assert await client.put("rollout-lease:m", b"w1/b", only_new=True, ttl_ms=3000)
                assert await client.delete("rollout-lease:m", token="w1/b")
                await client.report("worker-0", {"replica": "worker-0", "models": {}}, 5.0)
                await client.report("worker-1", {"replica": "worker-1", "models": {}}, 1.0)
                assert [r["replica"] for r in await client.replicas()] == ["worker-0", "worker-1"]
                clock.now += 2.0
                assert [r["replica"] for r in await client.replicas()] == ["worker-0"]
                await client.withdraw("worker-0")
                assert await client.replicas() == []
                await client.add_member("rollouts", "m")
                assert await client.members("rollouts") == ["m"]
            finally:
                await client.close()

    run(scenario)


def test_rollouts_are_kept_in_rollouts_json_and_read_at_start(run_dir: Path, tmp_path: Path) -> None:
    """A rollout's document goes to rollouts.json (the single-process format) and comes back after a restart."""
    from gateway.rollouts import runner

    assert (ROLLOUTS_FILE, ROLLOUTS_FORMAT) == (runner.ROLLOUTS_FILE, runner.FORMAT)
    state = tmp_path / "state"
    doc = {"id": "r1", "model": "m", "phase": "running"}

    async def scenario() -> None:
        async with hosted(run_dir, state):
            client = HostStateClient(run_dir)
            try:
                with pytest.raises(ConnectionError, match="bad request"):  # refused, never kept
                    await client.put("rollout:x", b"{not json")
                assert await client.put("rollout:m", json.dumps(doc).encode())
                await client.add_member("rollouts", "m")
            finally:
                await client.close()
        saved = json.loads((state / ROLLOUTS_FILE).read_text())
        assert saved == {"format": 1, "rollouts": {"m": doc}}
        async with hosted(run_dir, state):
            client = HostStateClient(run_dir)
            try:
                assert await client.members("rollouts") == ["m"]
                raw = await client.get("rollout:m")
                assert raw is not None and json.loads(raw) == doc
            finally:
                await client.close()

    run(scenario)


def test_an_unwritable_state_dir_refuses_the_commit_and_changes_nothing(run_dir: Path, tiny_disk: Path) -> None:
    """Saved before anything changes: a full disk answers an error and the store keeps its seq."""
    from tests.disks import remount

    async def scenario() -> None:
        async with hosted(run_dir, tiny_disk):
            client = HostStateClient(run_dir)
            try:
                first = entry(1, "a")
                assert await client.commit("m", 0, ModelRecord(Route({1: 100}, 1), [first]), first, []) is None
                remount(tiny_disk, "ro")
                try:
                    second = entry(2, "b")
                    with pytest.raises(StoreWriteFailed):
                        await client.commit("m", 1, ModelRecord(Route({1: 100}, 2), [first, second]), second, [])
                finally:
                    remount(tiny_disk, "rw")
                assert await client.seqs() == {"m": 1}
                assert StateStore(tiny_disk).load()["m"].seq == 1
            finally:
                await client.close()

    run(scenario)


def test_a_store_that_does_not_answer_is_a_timeout_not_a_hang(run_dir: Path) -> None:
    """No server at the endpoint: the call fails within its timeout (the fleet turns it into a 503)."""

    async def scenario() -> None:
        client = HostStateClient(run_dir, timeout_s=0.3)
        try:
            with pytest.raises(TimeoutError):
                await client.seqs()
        finally:
            await client.close()

    run(scenario)


# -- end to end: real multi-worker hosts -----------------------------------------------------------

ADD_SUB_BODY = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16},
        ]
    }
).encode()
#: Version v adds 100 * v to INPUT0 + INPUT1: an answer says which version computed it.
OFFSET = 100


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """Model ``m`` with versions 1 and 2 that answer differently."""
    from tests.onnx_models import add_sub, write_model

    root = tmp_path / "models"
    for version in (1, 2):
        write_model(root, "m", version, add_sub(OFFSET * version))
    return root


def host_admin(port: int, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
    """One admin call on a fresh connection (it reaches whichever worker accepts it)."""
    from tests.rawhttp import request
    from tests.server import AUTH

    reply = request(port, method, path, b"" if doc is None else json.dumps(doc).encode(), AUTH, timeout_s=60)
    return reply.status, reply.json()


def served_version(port: int) -> int:
    """Send one inference on a fresh connection: the version that computed the answer (checked by value)."""
    from tests.rawhttp import request

    reply = request(port, "POST", "/v2/models/m/infer", ADD_SUB_BODY, {"Content-Type": "application/json"})
    assert reply.status == 200, reply.body
    doc: Any = reply.json()
    output = next(o for o in doc["outputs"] if o["name"] == "OUTPUT0")
    version = int(doc["model_version"])
    assert output["data"][0] == OFFSET * version  # the version named is the one that computed it
    return version


def worker_history(port: int) -> tuple[str, list[Any]]:
    """On one connection (so one worker): which worker it is, and the model's history it shows."""
    import http.client

    from tests.server import AUTH

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/admin/models", headers=AUTH)
        worker = json.loads(connection.getresponse().read())["state_store"]["replica"]
        connection.request("GET", "/admin/models/m/history", headers=AUTH)
        return str(worker), json.loads(connection.getresponse().read())["history"]
    finally:
        connection.close()


def pids_serving(records: list[dict[str, Any]], path: str) -> dict[int, int]:
    """Requests to ``path`` answered so far, by the answering worker's pid (access log)."""
    counts: dict[int, int] = {}
    for record in records:
        if record.get("logger") == "tensorgate.access" and path in str(record.get("path")):
            counts[record["pid"]] = counts.get(record["pid"], 0) + 1
    return counts


def test_a_change_through_any_worker_is_served_by_every_worker_once_it_answers(repository: Path) -> None:
    """Read-your-writes: after a 200 from swap, route or rollback, 50 requests to any worker all use it."""
    from tests.host import serve_host

    with serve_host(repository, workers=2, access_log=True) as host:
        status, doc = host_admin(host.port, "GET", "/admin/models")
        assert status == 200 and doc["state_store"]["url"].startswith("host:ipc://")
        host.wait_until(lambda: len(host_admin(host.port, "GET", "/admin/models")[1]["models"][0]["replicas"]) == 2,
                        "both workers reported")  # fmt: skip
        changes: list[tuple[str, str, Any, int]] = [
            ("POST", "/admin/models/m/swap", {"version": "1"}, 1),  # every worker loads 1 before the answer
            ("PUT", "/admin/models/m/route", {"weights": {"2": 100}}, 2),
            ("POST", "/admin/models/m/rollback", {}, 1),
            ("POST", "/admin/models/m/swap", {"version": "2", "actor": "ci"}, 2),
        ]
        assert served_version(host.port) == 2  # the highest version serves first
        for method, path, body, expected in changes:
            status, doc = host_admin(host.port, method, path, body)
            assert status == 200, doc
            versions = [served_version(host.port) for _ in range(50)]
            assert versions == [expected] * 50, f"{method} {path}: {versions}"
        # The requests reached every worker (the kernel spreads connections; keep going until it did).
        workers = set(host.pids("worker").values())
        for _ in range(40):
            if set(pids_serving(host.records(), "/infer")) >= workers:
                break
            assert {served_version(host.port) for _ in range(25)} == {2}
        assert set(pids_serving(host.records(), "/infer")) >= workers
        # One history for the host, whichever worker answers, naming the worker that took each change.
        histories: dict[str, list[Any]] = {}
        for _ in range(1000):
            worker, history = worker_history(host.port)
            assert histories.setdefault(worker, history) == history
            if len(histories) == 2:
                break
        assert sorted(histories) == ["worker-0", "worker-1"]
        assert histories["worker-0"] == histories["worker-1"]
        history = histories["worker-0"]
        assert [e["action"] for e in history][-4:] == ["swap", "route", "rollback", "swap"]
        assert {e["replica"] for e in history[-4:]} <= {"worker-0", "worker-1"}
        assert history[-1]["actor"] == "ci"
        seqs = [e["seq"] for e in history]
        assert seqs == sorted(set(seqs))  # never a lost or repeated change


def test_a_restart_of_the_host_keeps_routes_and_a_single_process_reads_the_same_file(
    repository: Path, tmp_path: Path
) -> None:
    """The host store writes routes.json in today's format: the next host and a single process start from it."""
    from tests.host import serve_host
    from tests.server import admin, serve

    state = tmp_path / "state"
    with serve_host(repository, workers=2, state_dir=state) as host:
        assert host_admin(host.port, "POST", "/admin/models/m/swap", {"version": "1"})[0] == 200
        history = host_admin(host.port, "GET", "/admin/models/m/history")[1]["history"]
        assert host.stop() == 0
    saved = StateStore(state).load()["m"]
    assert saved.route.weights == {1: 100} and [e.to_json() for e in saved.history] == history

    with serve_host(repository, workers=2, state_dir=state) as host:
        assert {served_version(host.port) for _ in range(20)} == {1}
        for _ in range(10):
            assert host_admin(host.port, "GET", "/admin/models/m/history")[1]["history"] == history
        assert host_admin(host.port, "POST", "/admin/models/m/versions/2/load")[0] == 200  # on every worker
        canary = {"weights": {"2": 90, "1": 10}}
        status, route = host_admin(host.port, "PUT", "/admin/models/m/route", canary)
        assert status == 200 and route["seq"] == history[-1]["seq"] + 2
        history = host_admin(host.port, "GET", "/admin/models/m/history")[1]["history"]
        assert host.stop() == 0

    with serve(repository, state_dir=state) as single:
        kept: Any = admin(single, "GET", "/admin/models/m/route").json()
        assert kept["weights"] == {"2": 90, "1": 10} and kept["seq"] == history[-1]["seq"]
        saved_history: Any = admin(single, "GET", "/admin/models/m/history").json()
        assert saved_history["history"] == history


def test_a_rollout_on_a_host_is_led_by_one_worker_and_kept_in_rollouts_json(tmp_path: Path) -> None:
    """One rollout for the host: the same from every worker, one leader (a lease in the host store), promoted once."""
    import threading

    from tests.host import serve_host
    from tests.onnx_models import write_model
    from tests.rawhttp import request
    from tests.test_rollout_e2e import CONFIG, identity

    root = tmp_path / "models"
    write_model(root, "m", 1, identity(), config=CONFIG)
    write_model(root, "m", 2, identity())
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    stop = threading.Event()
    statuses: list[int] = []

    def traffic(port: int) -> None:
        while not stop.is_set():
            reply = request(port, "POST", "/v2/models/m/infer", body.encode(), {"Content-Type": "application/json"})
            statuses.append(reply.status)

    with serve_host(root, workers=2, state_dir=tmp_path / "state") as host:
        assert host_admin(host.port, "POST", "/admin/models/m/swap", {"version": "1"})[0] == 200
        spec = {
            "to": "2",
            "steps": [{"weight": 50, "pause_s": 2}],
            "analysis": {"interval_s": 1.0, "min_requests": 3, "max_error_rate": 0.05},
            "actor": "ci",
        }
        sender = threading.Thread(target=traffic, args=(host.port,), daemon=True)
        sender.start()
        try:
            status, started = host_admin(host.port, "POST", "/admin/models/m/rollouts", spec)
            assert status == 201, started
            assert host_admin(host.port, "POST", "/admin/models/m/rollouts", spec)[0] == 409  # one per model
            leaders = set()
            for _ in range(10):
                status, doc = host_admin(host.port, "GET", "/admin/models/m/rollouts/current")
                assert status == 200 and doc["id"] == started["id"]
                leaders.add(doc["fleet"]["leader"])
            assert len(leaders) == 1 and leaders <= {"worker-0", "worker-1"}
            host.wait_until(
                lambda: host_admin(host.port, "GET", "/admin/models/m/rollouts/current")[1]["phase"] == "promoted",
                "the rollout promoted",
                timeout_s=120,
            )
        finally:
            stop.set()
            sender.join(timeout=60)
        assert statuses and set(statuses) == {200}
        assert {served_version_identity(host.port, body) for _ in range(20)} == {2}
        history = host_admin(host.port, "GET", "/admin/models/m/history")[1]["history"]
        promotes = [e for e in history if e.get("rollout_action") == "rollout-promote"]
        assert len(promotes) == 1 and promotes[0]["replica"] in leaders  # carried out once, by the leader
    saved = json.loads((tmp_path / "state" / "rollouts.json").read_text())
    assert saved["rollouts"]["m"]["id"] == started["id"] and saved["rollouts"]["m"]["phase"] == "promoted"


def served_version_identity(port: int, body: str) -> int:
    """The version that answered one request to the rollout test's model."""
    from tests.rawhttp import request

    reply = request(port, "POST", "/v2/models/m/infer", body.encode(), {"Content-Type": "application/json"})
    doc: Any = reply.json()
    return int(doc["model_version"])


def test_a_worker_killed_and_replaced_starts_from_the_host_store(repository: Path) -> None:
    """SIGKILL a worker after a change: its replacement (same name) serves the host's route, and changes go on."""
    import os
    import signal

    from tests.host import serve_host

    with serve_host(repository, workers=2) as host:
        assert host_admin(host.port, "POST", "/admin/models/m/swap", {"version": "1"})[0] == 200
        before = host.pids("worker")
        os.kill(before["worker-0"], signal.SIGKILL)
        host.wait_until(lambda: host.pids("worker").get("worker-0") not in (None, before["worker-0"]), "replaced")
        host.wait_workers_loaded()
        # The replacement started from the host store: every answer, from either worker, is version 1.
        assert {served_version(host.port) for _ in range(40)} == {1}
        status, doc = host_admin(host.port, "POST", "/admin/models/m/swap", {"version": "2"})
        assert status == 200, doc
        assert {served_version(host.port) for _ in range(40)} == {2}
        replicas = host_admin(host.port, "GET", "/admin/models")[1]["models"][0]["replicas"]
        assert sorted(r["replica"] for r in replicas) == ["worker-0", "worker-1"]
        assert all(r["seq"] == replicas[0]["seq"] for r in replicas)


def test_with_a_redis_store_each_worker_is_a_replica_of_the_redis_fleet(repository: Path, redis_server: Any) -> None:
    """``state_store = redis://``: no host store; the workers report to Redis as ``host:port/worker-i``."""
    import socket

    from tests.host import serve_host

    with serve_host(repository, workers=2, state_store=redis_server.url) as host:
        status, doc = host_admin(host.port, "POST", "/admin/models/m/swap?wait=all", {"version": "1"})
        assert status == 200, doc
        assert {served_version(host.port) for _ in range(20)} == {1}
        listing = host_admin(host.port, "GET", "/admin/models")[1]
        assert listing["state_store"]["url"] == redis_server.url
        names = sorted(r["replica"] for r in listing["models"][0]["replicas"])
        assert names == [f"{socket.gethostname()}:{host.port}/worker-{i}" for i in range(2)]
        assert not any(str(r.get("message", "")).startswith("host state store") for r in host.records())


def pinned_connections(port: int, count: int = 2) -> dict[str, Any]:
    """One keep-alive connection to each of ``count`` workers, by worker name (found by asking each connection)."""
    import http.client

    from tests.server import AUTH

    found: dict[str, Any] = {}
    for _ in range(1000):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/admin/models", headers=AUTH)
        worker = json.loads(connection.getresponse().read())["state_store"]["replica"]
        if worker in found:
            connection.close()
        else:
            found[worker] = connection
        if len(found) == count:
            return found
    raise AssertionError(f"1000 connections reached only {sorted(found)}")


def test_concurrent_changes_through_two_workers_never_lose_an_update(repository: Path) -> None:
    """Two route changes racing through different workers: 200 + 409 (or both 200, one after the other)."""
    import threading

    from tests.host import serve_host
    from tests.server import AUTH

    with serve_host(repository, workers=2) as host:
        assert host_admin(host.port, "POST", "/admin/models/m/versions/1/load")[0] == 200
        connections = pinned_connections(host.port)
        conflicts = 0
        try:
            for attempt in range(40):
                barrier = threading.Barrier(2)
                replies: dict[str, tuple[int, Any]] = {}

                def change(worker: str, weights: dict[str, int], barrier: threading.Barrier = barrier,
                           replies: dict[str, tuple[int, Any]] = replies) -> None:  # fmt: skip
                    body = json.dumps({"weights": weights, "actor": f"pipeline-{worker}"})
                    barrier.wait()
                    connection = connections[worker]
                    connection.request("PUT", "/admin/models/m/route", body, AUTH)
                    reply = connection.getresponse()
                    replies[worker] = (reply.status, json.loads(reply.read()))

                threads = [
                    threading.Thread(target=change, args=("worker-0", {"1": 70, "2": 30})),
                    threading.Thread(target=change, args=("worker-1", {"1": 40 + attempt % 2, "2": 60 - attempt % 2})),
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=120)
                statuses = sorted(status for status, _ in replies.values())
                assert statuses in ([200, 200], [200, 409]), replies
                if statuses == [200, 409]:
                    conflicts += 1
                    loser = next(doc for status, doc in replies.values() if status == 409)
                    assert "changed meanwhile through another replica" in loser["error"]
                history = host_admin(host.port, "GET", "/admin/models/m/history")[1]["history"]
                seqs = [e["seq"] for e in history]
                assert seqs == sorted(set(seqs)), "a seq appears twice or out of order"
                for worker, (status, route) in replies.items():  # every 200 is in the history, as answered
                    if status == 200:
                        entry = next(e for e in history if e["seq"] == route["seq"])
                        assert entry["after"]["weights"] == route["weights"] and entry["replica"] == worker
                if conflicts >= 3:
                    break
        finally:
            for connection in connections.values():
                connection.close()
        assert conflicts, "40 simultaneous pairs and never a 409: the race was never exercised"


def test_a_read_only_state_dir_answers_503_and_no_worker_changes(repository: Path, tiny_disk: Path) -> None:
    """Saved before applied, on a host too: the host store cannot write routes.json, so every worker keeps its route."""
    from tests.disks import remount
    from tests.host import serve_host
    from tests.rawhttp import request
    from tests.server import AUTH

    with serve_host(repository, workers=2, state_dir=tiny_disk / "state") as host:
        assert host_admin(host.port, "POST", "/admin/models/m/swap", {"version": "1"})[0] == 200
        remount(tiny_disk, "ro")
        try:
            reply = request(host.port, "POST", "/admin/models/m/swap", b'{"version": "2"}', AUTH, timeout_s=60)
            assert reply.status == 503 and reply.headers.get("retry-after") == "5", reply.body
            assert "cannot be written" in reply.json()["error"]  # type: ignore[index]
            assert {served_version(host.port) for _ in range(30)} == {1}
        finally:
            remount(tiny_disk, "rw")
        assert host_admin(host.port, "POST", "/admin/models/m/swap", {"version": "2"})[0] == 200
        assert {served_version(host.port) for _ in range(30)} == {2}
        assert [e["action"] for e in host_admin(host.port, "GET", "/admin/models/m/history")[1]["history"]] == [
            "swap",
            "swap",
        ]


def test_a_grpc_repository_load_answers_once_every_worker_applied_it(repository: Path) -> None:
    """Triton's RepositoryModelLoad over gRPC waits for the workers too: every worker is at its seq after the answer."""
    import tritonclient.grpc as grpcclient

    from tests.host import serve_host
    from tests.server import ADMIN_TOKEN, free_port

    grpc_port = free_port()
    with serve_host(repository, workers=2, grpc_port=grpc_port) as host:
        host.wait_until(lambda: len(host_admin(host.port, "GET", "/admin/models")[1]["models"][0]["replicas"]) == 2,
                        "both workers reported")  # fmt: skip
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for _ in range(5):
                client.load_model("m", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
                # Read at once after the answer: no worker may still be behind.
                model = host_admin(host.port, "GET", "/admin/models")[1]["models"][0]
                seqs = {r["replica"]: r["seq"] for r in model["replicas"]}
                history = host_admin(host.port, "GET", "/admin/models/m/history")[1]["history"]
                assert seqs == {"worker-0": history[-1]["seq"], "worker-1": history[-1]["seq"]}, seqs
        finally:
            client.close()


def test_an_unload_through_any_worker_unloads_on_every_worker(tmp_path: Path) -> None:
    """Admin and Triton's repository unload: after the 200, no worker serves the version any more.

    Every version loaded at the start (``version_policy = "all"``), so that the host's very first
    change is an unload: the other worker has no record of the model yet (a sweep found it kept
    serving the version then).
    """
    from tests.host import serve_host
    from tests.onnx_models import add_sub, write_model
    from tests.rawhttp import request

    repository = tmp_path / "models"
    for version in (1, 2):
        write_model(repository, "m", version, add_sub(OFFSET * version), 'version_policy = "all"\n')

    def pinned_status() -> int:
        reply = request(host.port, "POST", "/v2/models/m/versions/1/infer", ADD_SUB_BODY,
                        {"Content-Type": "application/json"})  # fmt: skip
        return reply.status

    def on_every_worker(expected: int) -> None:
        """Pinned requests on fresh connections until both workers answered some: all ``expected``."""
        start = len([r for r in host.records() if "/versions/1/infer" in str(r.get("path"))])
        workers = set(host.pids("worker").values())
        for _ in range(40):
            assert [pinned_status() for _ in range(10)] == [expected] * 10
            seen = [r for r in host.records() if "/versions/1/infer" in str(r.get("path"))][start:]
            if {r["pid"] for r in seen if r.get("logger") == "tensorgate.access"} >= workers:
                return
        raise AssertionError("the requests never reached both workers")

    with serve_host(repository, workers=2, access_log=True) as host:
        on_every_worker(200)  # loaded at the start everywhere
        for unload in ("/admin/models/m/versions/1/unload", "/v2/repository/models/m/unload"):
            if unload.startswith("/v2"):
                assert host_admin(host.port, "POST", "/admin/models/m/versions/1/load")[0] == 200  # on every worker
                on_every_worker(200)
            status, doc = host_admin(host.port, "POST", unload, {})
            assert status == 200, doc
            on_every_worker(404)  # read at once after the answer: no worker may still have it
            model = host_admin(host.port, "GET", "/admin/models")[1]["models"][0]
            assert [sorted(r["versions"]) for r in model["replicas"]] == [["2"], ["2"]], model
        # A worker killed and replaced after the unload does not load the version back
        # (version_policy = "all" would): it starts from the host's state.
        import os
        import signal

        before = host.pids("worker")
        os.kill(before["worker-1"], signal.SIGKILL)
        host.wait_until(lambda: host.pids("worker").get("worker-1") not in (None, before["worker-1"]), "replaced")
        host.wait_workers_loaded()
        on_every_worker(404)


def test_a_rollout_being_started_keeps_its_lease_across_ticks(run_dir: Path, tmp_path: Path) -> None:
    """While a rollout's candidate loads (its lease taken, the rollout not saved yet), the replica's
    own tick neither hands the lease back nor lets it lapse (review finding: it handed it back)."""
    from typing import cast

    from gateway.release.controller import ReleaseController
    from gateway.rollouts.figures import Figures
    from gateway.rollouts.fleet import FleetRolloutManager
    from gateway.rollouts.runner import RolloutStore
    from gateway.telemetry.requests import RequestMetrics

    async def scenario() -> None:
        async with hosted(run_dir, tmp_path / "state"):
            client = HostStateClient(run_dir)

            class NoController:  # no rollout runs in this scenario: the controller is only told of routes
                def add_route_listener(self, listener: object) -> None:
                    pass

            manager = FleetRolloutManager(
                cast(ReleaseController, NoController()), Figures(RequestMetrics()), RolloutStore(tmp_path / "state"),
                client, "worker-0", lease_s=0.2,
            )  # fmt: skip
            token = manager._token.encode()
            # What create() holds while the candidate loads: the lease, and the model marked as being started.
            assert await client.put("rollout-lease:m", token, only_new=True, ttl_ms=200)
            manager._leading.add("m")
            manager._creating.add("m")
            for _ in range(4):  # longer than the lease: renewed at each tick, never handed back
                await manager._tick()
                await asyncio.sleep(0.1)
            assert await client.get("rollout-lease:m") == token and "m" in manager._leading
            manager._creating.discard("m")  # create() failed: nothing was saved, the lease goes back
            await manager._tick()
            assert await client.get("rollout-lease:m") is None and "m" not in manager._leading
            await manager.close()

    run(scenario)


def test_the_versions_a_history_unloaded_are_those_nothing_brought_back() -> None:
    from gateway.release.history import unloaded_versions

    def change(seq: int, action: str, version: str | None, weights: dict[str, int]) -> HistoryEntry:
        details = {"version": version} if version is not None else {}
        after = {"weights": weights, "shadow": {}, "seq": seq}
        return HistoryEntry(seq, "2026-12-01T00:00:00+00:00", "ci", action, None, None, after, details=details)

    history = [
        change(1, "load", "2", {"1": 100}),
        change(2, "unload", "2", {"1": 100}),
        change(3, "unload", "3", {"1": 100}),
        change(4, "load", "3", {"1": 100}),  # loaded again
        change(5, "unload", "4", {"1": 100}),
        change(6, "rollback", None, {"1": 100, "4": 0}),  # routed to again (at weight 0): loaded by the rollback
    ]
    assert unloaded_versions(history) == {2}
    assert unloaded_versions(history, since=2) == set()  # what came after change 2 unloaded nothing that stays
    assert unloaded_versions(history[:5], since=2) == {4}
