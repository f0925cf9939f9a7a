"""Fleet mode: three gateway processes sharing their release state through a real Redis (docs/operations.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from tests.onnx_models import identity, write_model
from tests.rawhttp import Reply, request
from tests.redis_server import RedisServer
from tests.server import ADMIN_TOKEN, AUTH, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
BODY = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
JSON = {"Content-Type": "application/json"}


class Gateway:
    """``tensorgate serve --state-store redis://...`` as a process of its own."""

    def __init__(self, name: str, repository: Path, state: Path, store: str, *extra: str) -> None:
        self.extra = extra
        self.name = name
        self.repository = repository
        self.state = state
        self.store = store
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = state.parent / f"{name}.log"

    def start(self, ready: bool = True) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--repository", str(self.repository),
                 "--port", str(self.port), "--state-dir", str(self.state),
                 "--log-dir", str(self.state.parent / f"{self.name}-log"), "--state-store", self.store, "--no-predlog",
                 *self.extra],
                cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                     "TENSORGATE_GRPC_PORT": "0", "TENSORGATE_LOG_LEVEL": "info"},
            )  # fmt: skip
        wait_for(f"http://127.0.0.1:{self.port}/v2/health/{'ready' if ready else 'live'}", timeout_s=90)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def admin(self, method: str, path: str, doc: Any = None) -> Reply:
        return request(self.port, method, path, b"" if doc is None else orjson.dumps(doc), AUTH)

    def route(self) -> dict[str, Any]:
        reply = self.admin("GET", "/admin/models/m/route")
        assert reply.status == 200, reply.body
        return dict(orjson.loads(reply.body))

    def infer(self) -> Reply:
        return request(self.port, "POST", "/v2/models/m/infer", BODY, JSON)

    def served_version(self) -> str:
        reply = self.infer()
        assert reply.status == 200, reply.body
        return str(orjson.loads(reply.body)["model_version"])

    def metric(self, name: str) -> float | None:
        body = request(self.port, "GET", "/metrics").body.decode()
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


def repository(root: Path, versions: int) -> Path:
    for version in range(1, versions + 1):
        write_model(root, "m", version, identity("FP32"))  # each replica starts with its highest version only
    return root


def eventually(check: Any, timeout_s: float = 30.0) -> Any:
    """Poll ``check()`` until it returns something true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {check}")
        time.sleep(0.02)


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Gateway]]:
    """A, B and C share one Redis; C's registry has versions 1 and 2 only (A's and B's also 3).

    Each starts serving (and loading) only its highest version: the others load what the
    fleet's changes name themselves.
    """
    full = repository(tmp_path / "models", 3)
    short = repository(tmp_path / "models-short", 2)
    gateways = [
        Gateway(name, repo, tmp_path / name, redis_server.url)
        for name, repo in (("a", full), ("b", full), ("c", short))
    ]
    try:
        for gateway in gateways:
            gateway.start()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


def _replicas(gateway: Gateway) -> dict[str, dict[str, Any]]:
    doc = orjson.loads(gateway.admin("GET", "/admin/models").body)
    model = next(m for m in doc["models"] if m["name"] == "m")
    return {r["replica"]: r for r in model["replicas"]}


def test_a_change_through_one_replica_is_served_by_all(fleet: list[Gateway]) -> None:
    a, b, c = fleet
    eventually(lambda: len(_replicas(c)) == 3)
    # Every replica starts on the highest version it has; the fleet's first change sets one for all.
    reply = a.admin("POST", "/admin/models/m/swap?wait=all", {"version": "1", "actor": "ci"})
    assert reply.status == 200, reply.body
    for gateway in fleet:
        assert gateway.route()["weights"] == {"1": 100}
        assert gateway.served_version() == "1"
    # A load through A is a load intent: B (which started with version 3 only) loads 2 as well.
    reply = a.admin("POST", "/admin/models/m/versions/2/load?wait=all", {"actor": "ci"})
    assert reply.status == 200, reply.body
    assert _replicas(c)[f"{socket.gethostname()}:{b.port}"]["versions"]["2"] == "READY"
    reply = a.admin("PUT", "/admin/models/m/route?wait=all", {"weights": {"1": 90, "2": 10}, "actor": "ci"})
    assert reply.status == 200, reply.body
    seq = orjson.loads(reply.body)["seq"]
    replicas = _replicas(b)
    assert len(replicas) == 3 and all(r["seq"] == seq and r["lagging"] is None for r in replicas.values())
    assert all(r["versions"] == {"1": "READY", "2": "READY", **({"3": "READY"} if "3" in r["versions"] else {})}
               for r in replicas.values())  # fmt: skip
    doc = orjson.loads(b.admin("GET", "/admin/models").body)
    assert doc["state_store"]["up"] is True and doc["state_store"]["url"].startswith("redis://127.0.0.1:")

    # Convergence: a canary moved through A, seen by B and C (no ?wait): how long until both serve it.
    delays = []
    for i in range(100):
        weights = {"1": 90 - i % 50, "2": 10 + i % 50}
        started = time.monotonic()
        reply = a.admin("PUT", "/admin/models/m/route", {"weights": weights, "actor": "ci"})
        assert reply.status == 200, reply.body
        seq = orjson.loads(reply.body)["seq"]
        for gateway in (b, c):
            eventually(lambda g=gateway, s=seq: g.route()["seq"] == s, timeout_s=30)
        delays.append(time.monotonic() - started)
    delays.sort()
    p99 = delays[int(len(delays) * 0.99) - 1]
    print(f"fleet convergence over {len(delays)} changes: median {statistics.median(delays) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")  # fmt: skip
    # The 1 s target is measured here and in docs/operations.md; the bound is generous for a loaded CI.
    assert p99 < 10
    assert b.metric("tensorgate_state_store_up") == 1.0

    # A change whose message never came (written straight into Redis): the periodic reconcile applies it.
    async def unannounced() -> int:
        client = aioredis.from_url(a.store)
        try:
            seq = int(await client.hget("tensorgate:model:m", "seq") or 0) + 1
            after = {"seq": seq, "weights": {"1": 100}, "shadow": {}, "sticky_header": None}
            entry = {"seq": seq, "time": "", "actor": "test", "action": "route", "reason": None,
                     "before": None, "after": after}  # fmt: skip
            await client.hset("tensorgate:model:m", mapping={"seq": seq, "route": orjson.dumps(after)})
            await client.rpush("tensorgate:history:m", orjson.dumps(entry))
            return seq
        finally:
            await client.aclose()

    seq = asyncio.run(unannounced())
    expected = {"seq": seq, "weights": {"1": 100}, "shadow": {}, "sticky_header": None}
    for gateway in fleet:
        eventually(lambda g=gateway: g.route() == expected)


def test_concurrent_changes_through_two_replicas_never_lose_an_update(fleet: list[Gateway]) -> None:
    a, b, _ = fleet
    assert a.admin("POST", "/admin/models/m/swap?wait=all", {"version": "1"}).status == 200
    assert a.admin("POST", "/admin/models/m/versions/2/load?wait=all", {}).status == 200
    conflicts = 0
    for _ in range(40):
        barrier = threading.Barrier(2)
        replies: dict[str, Reply] = {}

        def change(
            gateway: Gateway, weights: dict[str, int], barrier: threading.Barrier = barrier,
            replies: dict[str, Reply] = replies,
        ) -> None:  # fmt: skip
            barrier.wait()
            replies[gateway.name] = gateway.admin(
                "PUT", "/admin/models/m/route", {"weights": weights, "actor": f"pipeline-{gateway.name}"}
            )

        threads = [
            threading.Thread(target=change, args=(a, {"1": 70, "2": 30})),
            threading.Thread(target=change, args=(b, {"1": 40, "2": 60})),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status for r in replies.values())
        assert statuses in ([200, 200], [200, 409]), {k: (r.status, r.body) for k, r in replies.items()}
        if statuses == [200, 409]:
            conflicts += 1
            loser = next(r for r in replies.values() if r.status == 409)
            assert "changed meanwhile through another replica" in orjson.loads(loser.body)["error"]
        latest = max(orjson.loads(r.body)["seq"] for r in replies.values() if r.status == 200)
        eventually(lambda latest=latest: a.route()["seq"] >= latest)  # A has applied B's change too
        history = orjson.loads(a.admin("GET", "/admin/models/m/history").body)["history"]
        seqs = [e["seq"] for e in history]
        assert seqs == sorted(set(seqs)), "a seq appears twice or out of order"
        for name, reply in replies.items():  # every 200 is in the history, under its own seq
            if reply.status == 200:
                route = orjson.loads(reply.body)
                entry = next(e for e in history if e["seq"] == route["seq"])
                assert entry["after"]["weights"] == route["weights"] and entry["actor"] == f"pipeline-{name}"
                assert entry["replica"].endswith(f":{(a if name == 'a' else b).port}")
        if conflicts >= 3:
            break
    assert conflicts, "40 simultaneous pairs and never a 409: the race was never exercised"


def test_redis_down_serving_goes_on_admin_503_then_reconciles(fleet: list[Gateway], redis_server: RedisServer) -> None:
    a, b, c = fleet
    errors: list[str] = []
    served = [0]
    stop = threading.Event()
    targets = list(fleet)  # C leaves the load while it restarts

    def load() -> None:
        while not stop.is_set():
            for gateway in list(targets):
                try:
                    reply = gateway.infer()
                except OSError as exc:
                    if gateway in targets:
                        errors.append(f"{gateway.name}: {exc}")
                    continue
                if reply.status != 200 and gateway in targets:  # (not C, drained on purpose)
                    errors.append(f"{gateway.name}: {reply.status} {reply.body[:200]!r}")
                served[0] += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        # A swap with ?wait=all under load: every replica loads version 2 and moves, no request fails.
        assert a.admin("POST", "/admin/models/m/swap?wait=all", {"version": "1"}).status == 200
        assert a.admin("POST", "/admin/models/m/swap?wait=all", {"version": "2"}).status == 200
        time.sleep(0.5)
        redis_server.kill()
        for gateway in fleet:
            eventually(lambda g=gateway: g.metric("tensorgate_state_store_up") == 0.0)
        reply = b.admin("PUT", "/admin/models/m/route", {"weights": {"1": 100}})
        assert reply.status == 503, reply.body
        assert "state store" in orjson.loads(reply.body)["error"] and "unreachable" in orjson.loads(reply.body)["error"]
        assert reply.headers.get("retry-after")
        doc = orjson.loads(b.admin("GET", "/admin/models").body)  # reads answer, and say the store is away
        assert doc["state_store"]["up"] is False
        assert all(g.route()["weights"] == {"2": 100} for g in fleet)

        # A replica restarted while Redis is down serves the state it last applied, and says so.
        targets.remove(c)
        c.stop()
        c.start()
        targets.append(c)
        assert c.route()["weights"] == {"2": 100} and c.served_version() == "2"
        doc = orjson.loads(c.admin("GET", "/admin/models").body)
        assert doc["state_store"] == {**doc["state_store"], "up": False, "serving_cached_state": True}
        assert c.metric("tensorgate_state_store_up") == 0.0

        redis_server.start()
        for gateway in fleet:
            eventually(lambda g=gateway: g.metric("tensorgate_state_store_up") == 1.0)
        eventually(lambda: len(_replicas(a)) == 3)
        reply = b.admin("POST", "/admin/models/m/swap?wait=all", {"version": "1"})
        assert reply.status == 200, reply.body
        assert all(g.route()["weights"] == {"1": 100} for g in fleet)
        assert orjson.loads(c.admin("GET", "/admin/models").body)["state_store"]["serving_cached_state"] is False
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:5]
    assert served[0] > 30


def test_a_replica_that_cannot_load_keeps_its_route_and_is_named(fleet: list[Gateway]) -> None:
    a, b, c = fleet
    assert a.admin("POST", "/admin/models/m/swap?wait=all", {"version": "2"}).status == 200
    reply = a.admin("POST", "/admin/models/m/swap?wait=all&timeout=3", {"version": "3"})
    assert reply.status == 202, reply.body
    doc = orjson.loads(reply.body)
    assert [p["replica"] for p in doc["pending"]] == [f"{socket.gethostname()}:{c.port}"]
    assert "version 3" in doc["pending"][0]["lagging"] and doc["result"]["weights"] == {"3": 100}
    assert b.route()["weights"] == {"3": 100} and b.served_version() == "3"
    assert c.route()["weights"] == {"2": 100} and c.served_version() == "2"  # the previous route serves
    lagging = _replicas(a)[f"{socket.gethostname()}:{c.port}"]["lagging"]
    assert lagging is not None and "not in the repository" in lagging
    for bad in ("?wait=some", "?wait=all&timeout=x", "?wait=all&timeout=-1"):
        reply = a.admin("PUT", f"/admin/models/m/route{bad}", {"weights": {"1": 100}})
        assert reply.status == 400 and "error" in orjson.loads(reply.body), bad
    assert a.route()["weights"] == {"3": 100}  # refused before anything changed
    # The CLI's --wait: exit 2, naming the replica still pending.
    command = [sys.executable, "-m", "gateway", "swap", "m", "3", "--wait", "--wait-timeout", "2",
               "--url", f"http://127.0.0.1:{a.port}"]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert f"{socket.gethostname()}:{c.port}" in done.stderr and orjson.loads(done.stdout)["pending"]
    # Going back to what C has brings the whole fleet together again.
    command[5] = "2"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert all(g.route()["weights"] == {"2": 100} for g in fleet)
    assert _replicas(a)[f"{socket.gethostname()}:{c.port}"]["lagging"] is None


def test_rollback_and_the_audit_trail_are_fleet_wide(fleet: list[Gateway]) -> None:
    a, b, c = fleet
    assert a.admin("POST", "/admin/models/m/swap?wait=all", {"version": "1", "actor": "alice"}).status == 200
    assert b.admin("POST", "/admin/models/m/swap?wait=all", {"version": "2", "actor": "bob"}).status == 200
    reply = c.admin("POST", "/admin/models/m/rollback?wait=all", {"actor": "carol", "reason": "bad canary"})
    assert reply.status == 200, reply.body
    assert all(g.route()["weights"] == {"1": 100} and g.served_version() == "1" for g in fleet)
    histories = [orjson.loads(g.admin("GET", "/admin/models/m/history").body)["history"] for g in fleet]
    assert histories[0] == histories[1] == histories[2]
    host = socket.gethostname()
    trail = [(e["action"], e["actor"], e["replica"]) for e in histories[0] if e["action"] in ("swap", "rollback")]
    assert trail == [
        ("swap", "alice", f"{host}:{a.port}"),
        ("swap", "bob", f"{host}:{b.port}"),
        ("rollback", "carol", f"{host}:{c.port}"),
    ]
    # The standby (the version kept for rollback) is the fleet's: B sees 2 as the standby C's rollback left.
    model = next(m for m in orjson.loads(b.admin("GET", "/admin/models").body)["models"] if m["name"] == "m")
    assert model["standby"] == "2"
    # A replica that stops leaves the live set at once; one that dies, once its report expires (5 s).
    c.stop()
    assert len(_replicas(a)) == 2
    assert b.process is not None
    b.process.kill()
    b.process.wait()
    b.process = None
    eventually(lambda: len(_replicas(a)) == 1, timeout_s=30)
    assert a.admin("POST", "/admin/models/m/swap?wait=all&timeout=5", {"version": "2"}).status == 200


def test_compare_and_set_in_redis(redis_server: RedisServer) -> None:
    """The store's own contract: a change based on an old seq is refused, naming the seq it holds."""
    from gateway.release.history import HistoryEntry
    from gateway.release.store import ModelRecord
    from gateway.state.redis_store import RedisState, redact
    from routing.route import Route

    def entry(seq: int, actor: str) -> HistoryEntry:
        return HistoryEntry(seq, "", actor, "route", None, None, {"weights": {"1": 100}})

    async def scenario() -> None:
        state = RedisState(redis_server.url)
        try:
            local = [entry(1, "earlier"), entry(2, "earlier"), entry(3, "first")]
            first = ModelRecord(Route({1: 100}, 3), local)
            # A model the store never saw takes its first change with the replica's earlier history.
            assert await state.commit("m", 2, first, local[-1], [1], seed=True) is None
            second = ModelRecord(Route({1: 100}, 4), [*local, entry(4, "winner")])
            assert await state.commit("m", 3, second, second.history[-1], [1]) is None
            late = ModelRecord(Route({1: 100}, 4), [*local, entry(4, "loser")])
            assert await state.commit("m", 3, late, late.history[-1], [1]) == 4  # refused: the store is at 4
            stored = await state.model("m")
            assert stored is not None and stored.loaded == frozenset({1})
            assert [e.actor for e in stored.record.history] == ["earlier", "earlier", "first", "winner"]
            assert await state.seqs() == {"m": 4}
        finally:
            await state.close()

    asyncio.run(scenario())
    assert redact("rediss://:s3cret@redis:6380/0") == "rediss://:***@redis:6380/0"
    assert redact("redis://user:s3cret@redis/1") == "redis://user:***@redis/1"
    assert redact("redis://redis:6379/0") == "redis://redis:6379/0"


def test_without_a_store_wait_all_answers_at_once_and_the_metric_is_1(tmp_path: Path) -> None:
    from tests.server import admin, serve

    with serve(repository(tmp_path / "models", 2)) as server:
        reply = admin(server, "POST", "/admin/models/m/swap?wait=all", {"version": "1"})
        assert reply.status == 200 and orjson.loads(reply.body)["weights"] == {"1": 100}
        assert admin(server, "POST", "/admin/models/m/swap?wait=soon", {"version": "2"}).status == 400
        doc = orjson.loads(admin(server, "GET", "/admin/models").body)
        assert "state_store" not in doc and "replicas" not in doc["models"][0]
        metrics = request(server.port, "GET", "/metrics").body.decode()
        assert "\ntensorgate_state_store_up 1.0\n" in metrics


def test_the_store_password_from_a_file(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret-pass")
    server.start()
    try:
        (tmp_path / "password").write_text("s3cret-pass\n")
        gateway = Gateway(
            "a", repository(tmp_path / "models", 2), tmp_path / "a", server.url,
            "--state-store-password-file", str(tmp_path / "password"),
        )  # fmt: skip
        gateway.start()
        try:
            reply = gateway.admin("POST", "/admin/models/m/swap?wait=all", {"version": "1"})
            assert reply.status == 200, reply.body
            assert gateway.metric("tensorgate_state_store_up") == 1.0
        finally:
            gateway.stop()
        # The wrong password: the gateway serves, and every change says the store is unreachable.
        (tmp_path / "password").write_text("wrong")
        gateway.start()
        try:
            reply = gateway.admin("POST", "/admin/models/m/swap", {"version": "2"})
            assert reply.status == 503 and "state store" in orjson.loads(reply.body)["error"], reply.body
            assert "s3cret" not in reply.body.decode() and gateway.served_version() == "1"
        finally:
            gateway.stop()
        (tmp_path / "password").write_text("  \n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--repository", str(tmp_path / "models"),
             "--state-dir", str(tmp_path / "a"), "--state-store", server.url,
             "--state-store-password-file", str(tmp_path / "password")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 2 and "state_store_password_file" in done.stderr and "empty" in done.stderr
    finally:
        server.kill()


def test_alias_moves_are_followed_once_for_the_fleet(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two replicas follow one alias: one of them swaps, the other sees it in the shared history."""
    from gateway.registry.local import LocalRegistry
    from tests.server import admin, serve

    root = repository(tmp_path / "models", 2)
    (root / "m" / "config.toml").write_text('[mlflow]\nfollow = "champion"\n')
    aliases = {"champion": 1}

    class AliasRegistry(LocalRegistry):
        def default_version(self, model: str) -> int | None:
            return aliases["champion"]

        def aliases(self, model: str) -> dict[str, int]:
            return dict(aliases)

    # B polls rarely: its next poll comes after A acted on the move and a person rolled back.
    with (
        serve(root, registry=AliasRegistry(root), state_store=redis_server.url, registry_poll_s=0.1) as a,
        serve(root, registry=AliasRegistry(root), state_store=redis_server.url, registry_poll_s=4.0) as b,
    ):
        aliases["champion"] = 2
        for server in (a, b):
            eventually(
                lambda s=server: orjson.loads(admin(s, "GET", "/admin/models/m/route").body)["weights"] == {"2": 100}
            )
        history = orjson.loads(admin(a, "GET", "/admin/models/m/history").body)["history"]
        assert [e["alias_version"] for e in history if e["actor"] == "mlflow-alias"] == ["2"]
        # A person's rollback stands on every replica until the alias moves again.
        reply = admin(b, "POST", "/admin/models/m/rollback?wait=all", {"actor": "oncall"})
        assert reply.status == 200, reply.body
        time.sleep(5)  # many polls of A's follower, at least one of B's
        for server in (a, b):
            assert orjson.loads(admin(server, "GET", "/admin/models/m/route").body)["weights"] == {"1": 100}
        history = orjson.loads(admin(b, "GET", "/admin/models/m/history").body)["history"]
        assert [e["actor"] for e in history if e["action"] in ("swap", "rollback")] == ["mlflow-alias", "oncall"]
