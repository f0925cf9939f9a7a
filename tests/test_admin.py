"""The admin API end to end: auth on every route, routing, sticky cohorts, lifecycle, audit, restarts."""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import tritonclient.http as httpclient
from starlette.routing import Mount

from gateway.api.app import create_app
from gateway.settings import Settings
from tests.disks import remount
from tests.onnx_models import add_sub, write_model
from tests.rawhttp import Reply, request
from tests.server import ADMIN_TOKEN, AUTH, RunningServer, admin, serve

INPUTS = orjson.dumps(
    {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16} for n in ("INPUT0", "INPUT1")]}
)


def build_repository(root: Path) -> Path:
    # v1 adds 0, v2 adds 100, v3 adds 200: each answer says which version computed it.
    write_model(root, "simple", 1, add_sub(0), config='version_policy = "all"\n')
    write_model(root, "simple", 2, add_sub(100))
    write_model(root, "simple", 3, add_sub(200))
    (root / "broken" / "1").mkdir(parents=True)
    write_model(root, "broken", 1, add_sub(0))
    (root / "broken" / "2").mkdir(parents=True)
    (root / "broken" / "2" / "model.onnx").write_bytes(b"not onnx")
    write_model(root, "misconfigured", 1, add_sub(0), config="colour = 'blue'\n")
    return root


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return build_repository(tmp_path / "models")


@pytest.fixture
def server(repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    with serve(repository, state_dir=tmp_path / "state", strict_readiness=False) as running:
        yield running


def served_by(reply: Reply) -> int:
    assert reply.status == 200, reply.body
    doc: Any = reply.json()
    offset = doc["outputs"][0]["data"][0] - 2  # INPUT0 + INPUT1 = 2, plus the version's offset
    version = {0: 1, 100: 2, 200: 3}[offset]
    assert doc["model_version"] == str(version) == reply.headers["x-model-version"]
    return version


class Client:
    """A keep-alive HTTP client for many requests."""

    def __init__(self, server: RunningServer) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.close()

    def infer(self, headers: dict[str, str] | None = None) -> int:
        self.connection.request("POST", "/v2/models/simple/infer", INPUTS, headers or {})
        response = self.connection.getresponse()
        body = response.read()
        reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
        return served_by(reply)


# -- auth ----------------------------------------------------------------------------------


def admin_routes() -> list[tuple[str, str]]:
    """Every (method, path) under /admin and /v2/repository that the app defines."""
    app = create_app(Settings())
    found = []
    for mount in app.app.routes:  # type: ignore[attr-defined]
        if isinstance(mount, Mount) and mount.path in ("/admin", "/v2/repository"):
            for route in mount.routes:
                path = mount.path + route.path.replace("{model}", "simple").replace("{version}", "1")
                found.extend((method, path) for method in sorted(route.methods - {"HEAD"}))  # type: ignore[attr-defined]
    return found


def test_the_admin_surface_is_what_the_contract_names() -> None:
    paths = {p for _, p in admin_routes()}
    assert {
        "/admin/models", "/admin/models/simple/versions/1/load", "/admin/models/simple/versions/1/unload",
        "/admin/models/simple/route", "/admin/models/simple/swap", "/admin/models/simple/rollback",
        "/admin/models/simple/history", "/v2/repository/index", "/v2/repository/models/simple/load",
        "/v2/repository/models/simple/unload",
    } <= paths  # fmt: skip


BAD_CREDENTIALS = [
    {},
    {"Authorization": "Bearer "},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": "Bearer wrong-token-0123456789"},
    {"Authorization": f"Bearer {ADMIN_TOKEN} "},
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    {"Authorization": f"bearer {ADMIN_TOKEN}x"},
]


def test_every_admin_route_refuses_bad_credentials_identically(server: RunningServer) -> None:
    routes = [*admin_routes(), ("GET", "/admin/unknown"), ("POST", "/v2/repository/models/x/whatever")]
    for method, path in routes:
        bodies = set()
        payload = b"" if method == "GET" else b"{}"
        for headers in BAD_CREDENTIALS:
            reply = request(server.port, method, path, payload, headers)
            assert reply.status == 401, (method, path, headers)
            assert reply.headers["www-authenticate"].startswith("Bearer")
            bodies.add(reply.body)
        token_in_query = request(server.port, method, f"{path}?token={ADMIN_TOKEN}", payload)
        assert token_in_query.status == 401
        assert bodies == {b'{"error":"unauthorized"}'}
    assert request(server.port, "GET", "/admin/models", b"", {"Authorization": f"bearer {ADMIN_TOKEN}"}).status == 200


def test_a_generated_token_lands_in_a_0600_file(repository: Path, tmp_path: Path) -> None:
    state = tmp_path / "generated-state"
    with serve(repository, state_dir=state, environ={}, strict_readiness=False) as running:
        token_file = state / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        reply = request(running.port, "GET", "/admin/models", b"", {"Authorization": f"Bearer {token}"})
        assert reply.status == 200


# -- routes --------------------------------------------------------------------------------


def test_models_and_the_initial_route(server: RunningServer) -> None:
    models = {m["name"]: m for m in admin(server, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    simple = models["simple"]
    assert simple["available"] == ["1", "2", "3"]
    assert {v: e["state"] for v, e in simple["versions"].items()} == {"1": "READY", "2": "READY", "3": "READY"}
    assert simple["route"] == {"seq": 0, "weights": {"3": 100}, "shadow": {}, "sticky_header": None}
    assert admin(server, "GET", "/admin/models/simple/route").json()["weights"] == {"3": 100}  # type: ignore[index]


def test_weighted_split_passes_a_chi_square_test(server: RunningServer) -> None:
    reply = admin(server, "PUT", "/admin/models/simple/route", {"weights": {"1": 90, "2": 10}, "reason": "canary"})
    assert reply.status == 200 and reply.json()["seq"] == 1  # type: ignore[index]
    with Client(server) as client:
        counts = Counter(client.infer() for _ in range(3000))
    expected = {1: 2700, 2: 300}
    chi2 = sum((counts[v] - e) ** 2 / e for v, e in expected.items())
    assert set(counts) == {1, 2}
    assert chi2 < 10.83  # p = 0.001 for one degree of freedom


def test_sticky_cohorts_stay_and_grow_monotonically(server: RunningServer) -> None:
    route = {"weights": {"1": 90, "2": 10}, "sticky_header": "x-user-id"}
    assert admin(server, "PUT", "/admin/models/simple/route", route).status == 200
    users = [f"user-{i}" for i in range(600)]
    with Client(server) as client:
        first = {u: client.infer({"x-user-id": u}) for u in users}
        assert first == {u: client.infer({"x-user-id": u}) for u in users}  # stable while weights stand
        canary = {u for u, v in first.items() if v == 2}
        assert 30 <= len(canary) <= 95  # ~10% of 600
        route["weights"] = {"1": 80, "2": 20}
        assert admin(server, "PUT", "/admin/models/simple/route", route).status == 200
        second = {u: client.infer({"x-user-id": u}) for u in users}
    assert all(second[u] == 2 for u in canary)  # the first 10% stay on the canary
    assert 85 <= sum(1 for v in second.values() if v == 2) <= 160


@pytest.mark.parametrize(
    ("route", "status", "message"),
    [
        ({"weights": {"1": 90, "2": 20}}, 400, "sum to 100"),
        ({"weights": {"1": 110, "2": -10}}, 400, "non-negative"),
        ({"weights": {"1": "100"}}, 400, "non-negative integer"),
        ({"weights": {"1": 99.5, "2": 0.5}}, 400, "non-negative integer"),
        ({"weights": {}}, 400, "at least one"),
        ({"weights": {"01": 100}}, 400, "invalid version"),
        ({"weights": {"1": 100}, "shadow": {"2": 1.5}}, 400, "(0, 1]"),
        ({"weights": {"1": 100}, "shadow": {"1": 0.5}}, 400, "both take traffic"),
        ({"weights": {"1": 100}, "sticky_header": "bad header"}, 400, "header name"),
        ({"weights": {"1": 100}, "colour": 1}, 400, "unknown route fields"),
        ({"weights": {"9": 100}}, 404, "version 9"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_invalid_routes_change_nothing(server: RunningServer, route: Any, status: int, message: str) -> None:
    before = admin(server, "GET", "/admin/models/simple/route").body
    reply = admin(server, "PUT", "/admin/models/simple/route", route)
    assert reply.status == status and message in reply.json()["error"]  # type: ignore[index]
    assert admin(server, "GET", "/admin/models/simple/route").body == before
    assert admin(server, "GET", "/admin/models/simple/history").json()["history"] == []  # type: ignore[index]


def test_a_failed_version_cannot_take_traffic(server: RunningServer) -> None:
    # Start-up routed "broken" to its highest version, which failed to load.
    reply = admin(server, "POST", "/admin/models/broken/versions/2/load")
    assert reply.status == 502 and "failed to load" in reply.json()["error"]  # type: ignore[index]
    reply = admin(server, "PUT", "/admin/models/broken/route", {"weights": {"1": 50, "2": 50}})
    assert reply.status == 404 and "version 1" in reply.json()["error"]  # type: ignore[index]
    assert admin(server, "POST", "/admin/models/broken/versions/1/load").status == 200
    reply = admin(server, "PUT", "/admin/models/broken/route", {"weights": {"1": 50, "2": 50}})
    assert reply.status == 409 and "not READY" in reply.json()["error"]  # type: ignore[index]
    assert admin(server, "GET", "/admin/models/broken/route").json()["weights"] == {"2": 100}  # type: ignore[index]
    assert admin(server, "POST", "/admin/models/broken/swap", {"version": 1}).status == 200
    assert request(server.port, "POST", "/v2/models/broken/infer", INPUTS).status == 200
    assert admin(server, "POST", "/admin/models/simple/versions/7/load").status == 404


def test_a_model_with_a_bad_config_does_not_load(server: RunningServer) -> None:
    reply = admin(server, "POST", "/admin/models/misconfigured/versions/1/load")
    assert reply.status == 502
    assert "misconfigured/config.toml: colour: unknown key" in reply.json()["error"]  # type: ignore[index]
    described = {m["name"]: m for m in admin(server, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    assert described["misconfigured"]["versions"] == {} and "colour" in described["misconfigured"]["error"]
    # Clients learn that it cannot serve, not why: config texts (paths, keys) are for /admin.
    for method, path, body in [
        ("GET", "/v2/models/misconfigured", b""),
        ("POST", "/v2/models/misconfigured/infer", INPUTS),
    ]:
        reply = request(server.port, method, path, body)
        assert reply.status == 503 and "configuration is invalid" in reply.json()["error"]  # type: ignore[index]
        assert "colour" not in reply.body.decode() and "config.toml" not in reply.body.decode()


def test_public_metadata_shows_no_errors_or_provenance(server: RunningServer) -> None:
    for path in ("/v2/models/broken/versions/2", "/v2/models/simple"):
        parameters = request(server.port, "GET", path).json()["parameters"]  # type: ignore[index]
        assert set(parameters) <= {"version", "state", "provider", "sha256"}, parameters
    reply = request(server.port, "POST", "/v2/models/broken/infer", INPUTS)
    assert reply.status == 503 and "failed to load (reason in /admin/models)" in reply.json()["error"]  # type: ignore[index]
    assert "ONNX" not in reply.body.decode()
    described = {m["name"]: m for m in admin(server, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    assert "not a readable ONNX model" in described["broken"]["versions"]["2"]["error"]


# -- lifecycle -----------------------------------------------------------------------------


def test_swap_rollback_history_and_unload_rules(server: RunningServer) -> None:
    swap = admin(server, "POST", "/admin/models/simple/swap", {"version": "1", "actor": "ci", "reason": "release"})
    assert swap.status == 200 and swap.json()["weights"] == {"1": 100}  # type: ignore[index]
    described = {m["name"]: m for m in admin(server, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    assert described["simple"]["standby"] == "3"
    reply = admin(server, "POST", "/admin/models/simple/versions/3/unload")
    assert reply.status == 409 and "standby" in reply.json()["error"]  # type: ignore[index]
    reply = admin(server, "POST", "/admin/models/simple/versions/1/unload")
    assert reply.status == 409 and "100% of the traffic" in reply.json()["error"]  # type: ignore[index]
    assert (
        admin(server, "POST", "/admin/models/simple/versions/2/unload", headers={**AUTH, "x-actor": "ops"}).status
        == 200
    )
    assert request(server.port, "POST", "/v2/models/simple/versions/2/infer", INPUTS).status == 404

    back = admin(server, "POST", "/admin/models/simple/rollback", {"reason": "bad metrics"})
    assert back.status == 200 and back.json()["weights"] == {"3": 100}  # type: ignore[index]
    assert served_by(request(server.port, "POST", "/v2/models/simple/infer", INPUTS)) == 3
    to_first = admin(server, "POST", "/admin/models/simple/rollback", {"to": 1})
    assert to_first.json()["weights"] == {"1": 100}  # type: ignore[index]

    history = admin(server, "GET", "/admin/models/simple/history").json()["history"]  # type: ignore[index]
    assert [e["action"] for e in history] == ["swap", "unload", "rollback", "rollback"]
    assert [e["seq"] for e in history] == [1, 2, 3, 4]
    assert history[0]["actor"] == "ci" and history[0]["reason"] == "release"
    assert history[1]["actor"] == "ops" and history[1]["version"] == "2"
    assert history[0]["before"]["weights"] == {"3": 100} and history[0]["after"]["weights"] == {"1": 100}
    assert history[2]["time"].endswith("+00:00")


def test_rollback_with_nothing_to_roll_back_is_409(server: RunningServer) -> None:
    reply = admin(server, "POST", "/admin/models/simple/rollback")
    assert reply.status == 409 and "no route change" in reply.json()["error"]  # type: ignore[index]
    reply = admin(server, "POST", "/admin/models/simple/rollback", {"to": 42})
    assert reply.status == 409


def test_swap_under_load_fails_no_request(server: RunningServer) -> None:
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[int] = Counter()

    def hammer() -> None:
        with Client(server) as client:
            while not stop.is_set():
                try:
                    seen[client.infer()] += 1
                except Exception as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in ("1", "2", "3", "1"):
            assert admin(server, "POST", "/admin/models/simple/swap", {"version": version}).status == 200
        assert admin(server, "POST", "/admin/models/simple/rollback").status == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert sum(seen.values()) > 0


def test_concurrent_admin_calls_end_consistent(server: RunningServer) -> None:
    calls = [
        ("POST", "/admin/models/simple/swap", {"version": "2"}),
        ("PUT", "/admin/models/simple/route", {"weights": {"1": 50, "3": 50}}),
        ("POST", "/admin/models/simple/rollback", None),
        ("POST", "/admin/models/simple/versions/2/load", None),
        ("POST", "/admin/models/simple/swap", {"version": "3"}),
    ] * 4
    statuses: list[int] = []

    def call(method: str, path: str, doc: Any) -> None:
        statuses.append(admin(server, method, path, doc).status)

    threads = [threading.Thread(target=call, args=c) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(statuses) <= {200, 409}
    history = admin(server, "GET", "/admin/models/simple/history").json()["history"]  # type: ignore[index]
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
    route = admin(server, "GET", "/admin/models/simple/route").json()
    assert route == history[-1]["after"]
    described = {m["name"]: m for m in admin(server, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    for version in route["weights"]:  # type: ignore[index]
        assert described["simple"]["versions"][version]["state"] == "READY"
    served_by(request(server.port, "POST", "/v2/models/simple/infer", INPUTS))


def test_routes_and_history_survive_a_restart(repository: Path, tmp_path: Path) -> None:
    state = tmp_path / "kept-state"
    with serve(repository, state_dir=state, strict_readiness=False) as running:
        assert admin(running, "PUT", "/admin/models/simple/route", {"weights": {"1": 70, "2": 30}}).status == 200
    assert (state / "routes.json").exists()
    with serve(repository, state_dir=state, strict_readiness=False) as running:
        route = admin(running, "GET", "/admin/models/simple/route").json()
        assert route["weights"] == {"1": 70, "2": 30} and route["seq"] == 1  # type: ignore[index]
        history = admin(running, "GET", "/admin/models/simple/history").json()["history"]  # type: ignore[index]
        assert len(history) == 1
        assert {served_by(request(running.port, "POST", "/v2/models/simple/infer", INPUTS)) for _ in range(60)} == {
            1,
            2,
        }


def test_tritonclient_repository_extension(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.host)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        index = client.get_model_repository_index(headers=headers)
        assert {"name": "simple", "version": "3", "state": "READY"} in index
        assert any(e["name"] == "broken" and e["version"] == "2" and e["state"] == "UNAVAILABLE" for e in index)
        client.unload_model("simple", headers=headers)  # unloads 1 and 2; 3 serves
        assert not client.is_model_ready("simple", "1") and client.is_model_ready("simple", "3")
        client.load_model("simple", headers=headers)
        assert client.is_model_ready("simple", "3")
        with pytest.raises(Exception, match="401|unauthorized"):
            client.unload_model("simple")
    finally:
        client.close()


def test_unloading_a_zero_weight_version_drops_it_from_the_route(server: RunningServer) -> None:
    assert admin(server, "PUT", "/admin/models/simple/route", {"weights": {"3": 100, "2": 0}}).status == 200
    assert admin(server, "POST", "/admin/models/simple/versions/2/unload").status == 200
    route = admin(server, "GET", "/admin/models/simple/route").json()
    history = admin(server, "GET", "/admin/models/simple/history").json()["history"]  # type: ignore[index]
    assert route["weights"] == {"3": 100}  # type: ignore[index]
    assert route == history[-1]["after"] and route["seq"] == history[-1]["seq"] == 2  # type: ignore[index]


# -- a state directory that cannot be written: saved first, applied only once saved -------------


def fill(mountpoint: Path) -> None:
    """Fill the disk to the last byte."""
    with (mountpoint / "ballast").open("wb", buffering=0) as ballast, contextlib.suppress(OSError):
        while True:
            ballast.write(b"\0" * 512)


def test_an_unwritable_state_dir_is_a_503_and_changes_nothing(repository: Path, tiny_disk: Path) -> None:
    state = tiny_disk / "state"
    with serve(repository, state_dir=state, strict_readiness=False) as running:
        assert admin(running, "PUT", "/admin/models/simple/route", {"weights": {"3": 90, "2": 10}}).status == 200
        saved = (state / "routes.json").read_bytes()
        route = admin(running, "GET", "/admin/models/simple/route").body
        remount(tiny_disk, "ro")
        try:
            for method, path, doc in [
                ("PUT", "/admin/models/simple/route", {"weights": {"1": 100}}),
                ("POST", "/admin/models/simple/swap", {"version": "1"}),
                ("POST", "/admin/models/simple/rollback", None),
                ("POST", "/admin/models/simple/versions/1/unload", None),
            ]:
                reply = admin(running, method, path, doc)
                assert reply.status == 503, (path, reply.body)
                assert "cannot be written" in reply.json()["error"] and "nothing changed" in reply.json()["error"]  # type: ignore[index]
                assert str(state) not in reply.body.decode()
                assert reply.headers["retry-after"]
                assert admin(running, "GET", "/admin/models/simple/route").body == route
            # Nothing serves that a restart would not restore: version 1 still answers, the route stands.
            assert {served_by(request(running.port, "POST", "/v2/models/simple/infer", INPUTS)) for _ in range(60)} == {
                2,
                3,
            }
            assert served_by(request(running.port, "POST", "/v2/models/simple/versions/1/infer", INPUTS)) == 1
            history = admin(running, "GET", "/admin/models/simple/history").json()["history"]  # type: ignore[index]
            assert [e["action"] for e in history] == ["route"]
        finally:
            remount(tiny_disk, "rw")
        # A full disk is the same 503; once there is room again, changes apply.
        fill(tiny_disk)
        reply = admin(running, "POST", "/admin/models/simple/swap", {"version": "1"})
        assert reply.status == 503 and "nothing changed" in reply.json()["error"]  # type: ignore[index]
        assert admin(running, "GET", "/admin/models/simple/route").body == route
        assert (state / "routes.json").read_bytes() == saved
        assert not [p.name for p in state.iterdir() if p.name.startswith(".routes-")]  # no temporary left behind
        (tiny_disk / "ballast").unlink()
        assert admin(running, "POST", "/admin/models/simple/swap", {"version": "1"}).status == 200
        history = admin(running, "GET", "/admin/models/simple/history").json()["history"]  # type: ignore[index]
        assert [(e["seq"], e["action"]) for e in history] == [(1, "route"), (2, "swap")]
    with serve(repository, state_dir=state, strict_readiness=False) as running:
        assert admin(running, "GET", "/admin/models/simple/route").json()["weights"] == {"1": 100}  # type: ignore[index]


def test_a_load_that_cannot_be_saved_is_undone(repository: Path, tiny_disk: Path) -> None:
    state = tiny_disk / "state"
    with serve(repository, state_dir=state, strict_readiness=False) as running:
        assert admin(running, "POST", "/admin/models/simple/versions/1/unload").status == 200
        remount(tiny_disk, "ro")
        try:
            reply = admin(running, "POST", "/admin/models/simple/versions/1/load")
            assert reply.status == 503 and "load of model 'simple' not applied" in reply.json()["error"]  # type: ignore[index]
            assert request(running.port, "POST", "/v2/models/simple/versions/1/infer", INPUTS).status == 404
            described = {m["name"]: m for m in admin(running, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
            assert "1" not in described["simple"]["versions"]
        finally:
            remount(tiny_disk, "rw")
        assert admin(running, "POST", "/admin/models/simple/versions/1/load").status == 200
        history = admin(running, "GET", "/admin/models/simple/history").json()["history"]  # type: ignore[index]
        assert [e["action"] for e in history] == ["unload", "load"]


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '"routes"',
        "null",
        '{"format": 1, "models": []}',
        '{"format": 99, "models": {}}',
        '{"models": {"simple": {"route": {"weights": {"1": 100}}}}}x',
        '{"format": 1}',
    ],
)
def test_a_routes_file_of_the_wrong_shape_is_set_aside(repository: Path, tmp_path: Path, text: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "routes.json").write_text(text)
    with serve(repository, state_dir=state, strict_readiness=False) as running:
        assert admin(running, "GET", "/admin/models/simple/route").json()["weights"] == {"3": 100}  # type: ignore[index]
        assert (state / "routes.corrupt").read_text() == text
        assert admin(running, "POST", "/admin/models/simple/swap", {"version": "2"}).status == 200
    assert orjson.loads((state / "routes.json").read_bytes())["models"]["simple"]["route"]["weights"] == {"2": 100}


@pytest.mark.parametrize(
    "entry",
    [
        [1, 2],
        {"route": [1]},
        {"route": {"weights": {"1": 100}}, "history": "x"},
        {"route": {"weights": {"1": 100}}, "history": [{"seq": "1", "before": None, "after": None}]},
        {"route": {"weights": {"1": 100}}, "history": [{"seq": 1}]},
    ],
)
def test_a_misshapen_model_entry_is_ignored_and_kept_aside(repository: Path, tmp_path: Path, entry: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    good = {"route": {"weights": {"2": 100}, "seq": 4}, "history": []}
    text = orjson.dumps({"format": 1, "models": {"simple": entry, "broken": good}}).decode()
    (state / "routes.json").write_text(text)
    with serve(repository, state_dir=state, strict_readiness=False) as running:
        assert admin(running, "GET", "/admin/models/simple/route").json()["weights"] == {"3": 100}  # type: ignore[index]
        assert admin(running, "GET", "/admin/models/broken/route").json()["weights"] == {"2": 100}  # type: ignore[index]
    assert (state / "routes.corrupt").read_text() == text
