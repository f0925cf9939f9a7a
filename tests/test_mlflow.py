"""The MLflow registry against a real MLflow tracking server (SQLite backend, local artifacts).

tests/mlflow/log_models.py trains and registers the models as a pipeline would: two ONNX
versions of ``fraud-scorer`` (and a third) with parameters, metrics, a git commit and a dataset,
a scikit-learn model (pickle), and an artifact whose ONNX flavor points outside its directory.
"""

from __future__ import annotations

import http.server
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest

from tests.disks import remount
from tests.mlflow_server import MlflowServer, scorer_weights
from tests.rawhttp import Reply, request
from tests.required import import_or_unavailable
from tests.server import RunningServer, admin, prediction_log, serve, wait_for

JSON = {"Content-Type": "application/json"}
NAMES = "fraud=fraud-scorer,pickled=pickled,escape=escape"
FOLLOW = '[mlflow]\nfollow = "champion"\ncanary_alias = "challenger"\ncanary_weight = 20\n'
ROW = np.linspace(-1.0, 1.0, 16, dtype=np.float32)

mlflow = import_or_unavailable("mlflow", "the mlflow extra (mlflow-skinny) is not installed")


def expected_score(version: int) -> float:
    w = scorer_weights(version)
    return float(1.0 / (1.0 + np.exp(-(ROW @ w[:16] + w[16]))))


def infer(port: int, path: str = "/v2/models/fraud/infer") -> Reply:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": ROW.tolist()}]}
    return request(port, "POST", path, orjson.dumps(body), JSON)


def gateway_settings(server: MlflowServer, root: Path) -> dict[str, Any]:
    """The settings of a gateway that serves from ``server``, with fraud's config under ``root``."""
    (root / "configs" / "fraud").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "fraud" / "config.toml").write_text(FOLLOW)
    return {
        "repository": root / "configs",
        "registry_kind": "mlflow",
        "registry_tracking_uri": server.url,
        "registry_cache_dir": root / "cache",
        "registry_names": NAMES,
        "registry_poll_s": 0.2,
        "registry_timeout_s": 2.0,
        "strict_readiness": False,  # pickled and escape never load
        "state_dir": root / "state",
        "log_dir": root / "predictions",
    }


def wait_until(check: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError("condition never met")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    # A server that accepts model-version sources on other hosts, as MLflow before 3.17 did and
    # an operator may still allow: the gateway must not rely on the server to refuse them.
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), {"MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES": "http"})
    server.start()
    try:
        server.log_models()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("gateway")
    with serve(**gateway_settings(mlflow_server, root)) as running:  # type: ignore[arg-type]
        wait_for(running.url + "/v2/models/fraud/ready")
        yield running


def client(server: MlflowServer) -> Any:
    return mlflow.MlflowClient(server.url)


def test_the_champion_serves_with_its_provenance(gateway: RunningServer, mlflow_server: MlflowServer) -> None:
    # Version 1 is the champion: it serves, although 3 is the highest version.
    route = admin(gateway, "GET", "/admin/models/fraud/route").json()
    assert route["weights"] == {"1": 100}  # type: ignore[index]
    reply = infer(gateway.port)
    assert reply.status == 200 and reply.headers["x-model-version"] == "1"
    assert reply.json()["outputs"][0]["data"][0] == pytest.approx(expected_score(1), rel=1e-5)  # type: ignore[index]
    run_id = mlflow_server.runs["fraud-scorer"]["1"]
    # Provenance is for operators: under /admin, never in the public V2 metadata.
    public = request(gateway.port, "GET", "/v2/models/fraud").json()["parameters"]  # type: ignore[index]
    assert set(public) == {"version", "state", "provider", "sha256"}
    described = {m["name"]: m for m in admin(gateway, "GET", "/admin/models").json()["models"]}  # type: ignore[index]
    provenance = described["fraud"]["versions"]["1"]["provenance"]
    assert provenance["run_id"] == run_id and provenance["registered_model"] == "fraud-scorer"
    assert provenance["git_commit"] == "c0ffee" + "1".rjust(34, "0")
    assert provenance["params"] == {"learning_rate": "0.1"} and provenance["metrics"] == {"auc": 0.91}
    assert provenance["datasets"][0]["name"] == "transactions-2026-11" and provenance["datasets"][0]["digest"]
    assert provenance["source"].startswith("models:/") and provenance["aliases"] == ["champion"]
    assert described["fraud"]["available"] == ["1", "2", "3"]
    # Every prediction-log record names the run that produced the model.
    wait_until(lambda: any(r["model"] == "fraud" for r in prediction_log(gateway.settings.log_dir)))
    records = [r for r in prediction_log(gateway.settings.log_dir) if r["model"] == "fraud"]
    assert records and all(r["run_id"] == run_id for r in records if r["version"] == "1")


def test_pickle_flavors_and_escaping_artifacts_are_refused(gateway: RunningServer) -> None:
    reply = admin(gateway, "POST", "/admin/models/pickled/versions/1/load")
    assert reply.status == 502
    assert "flavor(s) python_function, sklearn refused: only the ONNX flavor" in reply.json()["error"]  # type: ignore[index]
    reply = admin(gateway, "POST", "/admin/models/escape/versions/1/load")
    assert reply.status == 502 and "leaves the artifact directory" in reply.json()["error"]  # type: ignore[index]
    cache = gateway.settings.registry_cache_dir
    assert not list(cache.parent.rglob("outside.onnx"))  # nothing landed outside (or inside) the cache
    assert not (cache / "escape" / "1").exists() and not (cache / "pickled" / "1").exists()
    text = request(gateway.port, "GET", "/metrics").body.decode()
    assert 'tensorgate_model_load_failures_total{model="pickled",reason="registry"}' in text
    assert infer(gateway.port).status == 200  # the server is unharmed


def test_a_cached_version_is_verified_not_downloaded_again(gateway: RunningServer) -> None:
    manifest = gateway.settings.registry_cache_dir / "fraud" / "2" / "tensorgate-manifest.json"
    assert admin(gateway, "POST", "/admin/models/fraud/versions/2/load").status == 200
    first = manifest.stat().st_mtime_ns
    assert admin(gateway, "POST", "/admin/models/fraud/versions/2/unload").status == 200
    assert admin(gateway, "POST", "/admin/models/fraud/versions/2/load").status == 200
    assert manifest.stat().st_mtime_ns == first  # loaded from the cache
    # A cached copy that changed on disk fails verification and is downloaded again.
    model_file = next(manifest.parent.rglob("*.onnx"))
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    assert admin(gateway, "POST", "/admin/models/fraud/versions/2/unload").status == 200
    assert admin(gateway, "POST", "/admin/models/fraud/versions/2/load").status == 200
    assert manifest.stat().st_mtime_ns != first
    assert infer(gateway.port, "/v2/models/fraud/versions/2/infer").json()["outputs"][0]["data"][0] == pytest.approx(  # type: ignore[index]
        expected_score(2), rel=1e-5
    )


def test_alias_moves_are_followed_and_audited(gateway: RunningServer, mlflow_server: MlflowServer) -> None:
    registry = client(mlflow_server)
    # challenger -> 3: a canary at 20%.
    registry.set_registered_model_alias("fraud-scorer", "challenger", "3")
    wait_until(lambda: admin(gateway, "GET", "/admin/models/fraud/route").json()["weights"] == {"1": 80, "3": 20})  # type: ignore[index]
    # champion -> 2: a hot-swap, 100% to version 2.
    registry.set_registered_model_alias("fraud-scorer", "champion", "2")
    wait_until(lambda: admin(gateway, "GET", "/admin/models/fraud/route").json()["weights"] == {"2": 100})  # type: ignore[index]
    reply = infer(gateway.port)
    assert reply.headers["x-model-version"] == "2"
    assert reply.json()["outputs"][0]["data"][0] == pytest.approx(expected_score(2), rel=1e-5)  # type: ignore[index]
    history = admin(gateway, "GET", "/admin/models/fraud/history").json()["history"]  # type: ignore[index]
    moves = [e for e in history if e["actor"] == "mlflow-alias" and e["action"] in ("route", "swap")]
    assert [(e["action"], e["alias"], e["alias_version"]) for e in moves] == [
        ("route", "challenger", "3"),
        ("swap", "champion", "2"),
    ]
    assert moves[-1]["provenance"]["2"]["run_id"] == mlflow_server.runs["fraud-scorer"]["2"]
    # A person's rollback stands: the follower acts on moves, not on differences.
    assert admin(gateway, "POST", "/admin/models/fraud/rollback", {"reason": "manual"}).status == 200
    time.sleep(1.0)  # five polls
    assert admin(gateway, "GET", "/admin/models/fraud/route").json()["weights"] == {"1": 80, "3": 20}  # type: ignore[index]


class Recorder(http.server.BaseHTTPRequestHandler):
    """An HTTP server that answers 404 to everything and remembers every path it was asked for."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Recorder.paths.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    """The base URL of a Recorder on loopback."""
    Recorder.paths = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_artifacts_outside_the_allow_list_are_never_fetched(
    mlflow_server: MlflowServer, recorder: str, tmp_path: Path
) -> None:
    registry = client(mlflow_server)
    # A writer to MLflow points versions elsewhere, through the artifact location of a run:
    # another server's artifact API (as MLflow's HTTP artifact client reads it), someone's bucket.
    for model, location in (("foreign", f"{recorder}/api/2.0/mlflow-artifacts/artifacts/exp"),
                            ("bucket", "s3://someone-elses-bucket/exp")):  # fmt: skip
        run = registry.create_run(registry.create_experiment(f"{model}-experiment", artifact_location=location))
        registry.create_registered_model(model)
        registry.create_model_version(model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    settings = gateway_settings(mlflow_server, tmp_path)
    settings["registry_names"] = "fraud=fraud-scorer,foreign=foreign,bucket=bucket"
    with serve(**settings) as gateway:  # type: ignore[arg-type]
        for model, place in (("foreign", recorder), ("bucket", "s3://someone-elses-bucket")):
            reply = admin(gateway, "POST", f"/admin/models/{model}/versions/1/load")
            assert reply.status == 502, reply.body
            assert f"its artifacts are at {place}, which registry_artifact_allow does not list" in reply.json()["error"]  # type: ignore[index]
            assert not (tmp_path / "cache" / model).exists()
        assert Recorder.paths == []  # not one request
        assert infer(gateway.port).status == 200  # the tracking server's own store serves as before
    # Allowed by the operator: the gateway goes there (and finds nothing).
    settings["registry_artifact_allow"] = f"mlflow-artifacts:,{recorder}/api/2.0/mlflow-artifacts"
    settings["state_dir"] = tmp_path / "state2"
    with serve(**settings) as gateway:  # type: ignore[arg-type]
        assert admin(gateway, "POST", "/admin/models/foreign/versions/1/load").status == 502
        assert Recorder.paths and all(p.startswith("/api/2.0/mlflow-artifacts/") for p in Recorder.paths)
        reply = admin(gateway, "POST", "/admin/models/bucket/versions/1/load")
        assert reply.status == 502 and "registry_artifact_allow" in reply.json()["error"]  # type: ignore[index]


def test_the_alias_follower_survives_an_unwritable_state_dir(
    mlflow_server: MlflowServer, tiny_disk: Path, tmp_path: Path
) -> None:
    registry = client(mlflow_server)
    registry.set_registered_model_alias("fraud-scorer", "champion", "2")
    registry.set_registered_model_alias("fraud-scorer", "challenger", "3")
    settings = gateway_settings(mlflow_server, tmp_path) | {"state_dir": tiny_disk / "state"}

    def weights() -> Any:
        return admin(gateway, "GET", "/admin/models/fraud/route").json()["weights"]  # type: ignore[index]

    with serve(**settings) as gateway:  # type: ignore[arg-type]
        wait_until(lambda: weights() == {"2": 80, "3": 20}, 60)  # champion serves, the challenger's canary
        history = admin(gateway, "GET", "/admin/models/fraud/history").json()["history"]  # type: ignore[index]
        remount(tiny_disk, "ro")
        try:
            registry.set_registered_model_alias("fraud-scorer", "champion", "1")
            time.sleep(1.5)  # several polls, each failing to save the swap
            assert weights() == {"2": 80, "3": 20}  # nothing applied that a restart would not restore
            assert admin(gateway, "GET", "/admin/models/fraud/history").json()["history"] == history  # type: ignore[index]
            assert infer(gateway.port).status == 200
        finally:
            remount(tiny_disk, "rw")
        wait_until(lambda: weights() == {"1": 100}, 60)  # the follower kept going
        last = admin(gateway, "GET", "/admin/models/fraud/history").json()["history"][-1]  # type: ignore[index]
        assert (last["actor"], last["action"], last["alias_version"]) == ("mlflow-alias", "swap", "1")
    with serve(**settings) as gateway:  # type: ignore[arg-type]
        assert weights() == {"1": 100}


def test_the_tracking_server_down_or_slow(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "mlflow")
    (tmp_path / "mlflow").mkdir()
    server.start()
    try:
        server.log_models()
        settings = gateway_settings(server, tmp_path)
        with serve(**settings) as gateway:  # type: ignore[arg-type]
            wait_for(gateway.url + "/v2/models/fraud/ready")
            # A sha256 tag that does not match the artifact: refused, nothing cached.
            registry = client(server)
            registry.set_model_version_tag("fraud-scorer", "3", "sha256", "0" * 64)
            reply = admin(gateway, "POST", "/admin/models/fraud/versions/3/load")
            assert reply.status == 502 and "checksum mismatch" in reply.json()["error"]  # type: ignore[index]
            assert not (tmp_path / "cache" / "fraud" / "3").exists()
            registry.delete_model_version_tag("fraud-scorer", "3", "sha256")
            # Slow: the server accepts connections but answers nothing -> 504, old version serving.
            server.signal(signal.SIGSTOP)
            started = time.monotonic()
            reply = admin(gateway, "POST", "/admin/models/fraud/versions/3/load")
            assert reply.status == 504 and "did not answer in time" in reply.json()["error"]  # type: ignore[index]
            assert time.monotonic() - started < 15
            assert infer(gateway.port).status == 200
            server.signal(signal.SIGCONT)
            # Down: connection refused -> 502, old version serving.
            server.stop()
            reply = admin(gateway, "POST", "/admin/models/fraud/versions/3/load")
            assert reply.status == 502 and "cannot be reached" in reply.json()["error"]  # type: ignore[index]
            assert str(server.port) not in reply.body.decode()
            assert infer(gateway.port).status == 200
            text = request(gateway.port, "GET", "/metrics").body.decode()
            assert 'tensorgate_model_load_failures_total{model="fraud",reason="timeout"} 1.0' in text
        # Start-up with MLflow down: live at once, and serving what the cache holds.
        with serve(**settings, ready=False) as gateway:  # type: ignore[arg-type]
            wait_for(gateway.url + "/v2/models/fraud/ready", timeout_s=60)
            reply = infer(gateway.port)
            assert reply.status == 200 and reply.headers["x-model-version"] == "1"
    finally:
        server.stop()
