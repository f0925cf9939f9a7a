"""The Kubernetes manifests and the Grafana dashboard agree with the server they deploy and watch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from gateway.api.app import PREDLOG_CLOSE_S, create_app
from gateway.settings import Settings, load_settings
from tests.onnx_models import identity, write_model
from tests.rawhttp import request
from tests.server import serve

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes, by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found.setdefault(doc["kind"], doc)
    return found


def served_paths() -> set[str]:
    app = create_app(Settings())
    return {route.path for route in app.app.routes if isinstance(route, Route)}  # type: ignore[attr-defined]


def test_kustomization_lists_every_manifest() -> None:
    directory = DEPLOY / "kubernetes"
    listed = set(yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_configmap_is_a_valid_tensorgate_toml(tmp_path: Path) -> None:
    text = manifests()["ConfigMap"]["data"]["tensorgate.toml"]
    (tmp_path / "tensorgate.toml").write_text(text)
    settings = load_settings(tmp_path / "tensorgate.toml", environ={})
    assert settings.host == "0.0.0.0" and settings.repository == Path("/models")
    assert settings.state_dir.is_relative_to("/data") and settings.log_dir.is_relative_to("/data")


def test_the_deployment_probes_ports_volumes_and_drain_fit_the_server() -> None:
    objects = manifests()
    config = tomllib.loads(objects["ConfigMap"]["data"]["tensorgate.toml"])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config["port"]}
    paths = served_paths()
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {"/v2/health/ready", "/v2/health/live", "/metrics"} <= paths
    # preStop sleep, then the drain and the prediction log's flush, must end before SIGKILL.
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert sleep + config["graceful_timeout_s"] + PREDLOG_CLOSE_S <= pod["terminationGracePeriodSeconds"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts[config["repository"]] == "models" and "persistentVolumeClaim" in volumes["models"]
    data = next(path for path in mounts if config["state_dir"].startswith(path + "/"))
    assert config["log_dir"].startswith(data + "/") and "persistentVolumeClaim" in volumes[mounts[data]]
    assert (
        container["args"] == ["--config", "/etc/tensorgate/tensorgate.toml"] and mounts["/etc/tensorgate"] == "config"
    )
    claims = {c["metadata"]["name"] for c in yaml.safe_load_all((DEPLOY / "kubernetes" / "storage.yaml").read_text())}
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v} <= claims


def test_service_servicemonitor_and_budget_select_the_pods() -> None:
    objects = manifests()
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]
    assert service["spec"]["selector"] == labels and service["spec"]["ports"][0]["targetPort"] == "http"
    monitor = objects["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every metric name a live server exposes (families and samples), after some traffic."""
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "m", 1, identity("FP32"), config="max_batch_size = 4\n")
    body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    with serve(root) as server:
        assert request(server.port, "POST", "/v2/models/m/infer", body).status == 200
        text = request(server.port, "GET", "/metrics").body.decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_dashboard_queries_exists(exposed: set[str]) -> None:
    dashboard = orjson.loads((DEPLOY / "grafana" / "tensorgate-dashboard.json").read_bytes())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [item["definition"] for item in dashboard["templating"]["list"] if "definition" in item]
    used = {name for query in queries for name in re.findall(r"\btensorgate_[a-z_]+", query)}
    assert len(used) >= 14
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in exposed}
    missing = [
        name
        for name in sorted(used)
        if name not in exposed and re.sub(r"_(bucket|sum|count|total)$", "", name) not in families
    ]
    assert not missing, missing
