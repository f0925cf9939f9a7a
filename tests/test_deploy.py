"""The Dockerfile, the Kubernetes manifests and the Grafana dashboard agree with the server.

The settings a pod runs with are computed as the pod computes them: the image's ENV, the
container's env, the ConfigMap mounted as a file, the image's ENTRYPOINT and the container's
args, through the CLI's own parser and ``load_settings``.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from gateway.api.app import PREDLOG_CLOSE_S, PREDLOG_KEY_FILE, create_app
from gateway.auth import TOKEN_FILE
from gateway.cli import _parser
from gateway.settings import Settings, load_settings, setting_types
from tests.onnx_models import identity, write_model
from tests.rawhttp import request
from tests.server import serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def objects() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes."""
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc and "kind" in doc)
    return found


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (named ``name``)."""
    (found,) = [o for o in objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def manifests() -> dict[str, dict[str, Any]]:
    """The first Kubernetes object of each kind."""
    found: dict[str, dict[str, Any]] = {}
    for doc in objects():
        found.setdefault(doc["kind"], doc)
    return found


def served_paths() -> set[str]:
    app = create_app(Settings())
    return {route.path for route in app.app.routes if isinstance(route, Route)}  # type: ignore[attr-defined]


# The Dockerfile ---------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, arguments = logical.partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == name]


def image_env() -> dict[str, str]:
    """The final image's ENV (``$PATH`` and the like expanded against a plain base)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    for arguments in instructions(dockerfile_stages()[-1], "ENV"):
        for token in shlex.split(arguments):
            key, eq, value = token.partition("=")
            assert eq, f"ENV {arguments}: use KEY=VALUE"
            env[key] = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), value)
    return env


def image_files() -> dict[str, Path]:
    """Files the final image COPYs from the build context: path in the image -> path here."""
    files = {}
    for arguments in instructions(dockerfile_stages()[-1], "COPY"):
        parts = arguments.split()
        if not parts[0].startswith("--from"):
            files[parts[1]] = ROOT / parts[0]
    return files


def entrypoint() -> list[str]:
    (text,) = instructions(dockerfile_stages()[-1], "ENTRYPOINT")
    return list(json.loads(text))


def image_volumes() -> list[str]:
    return [v for text in instructions(dockerfile_stages()[-1], "VOLUME") for v in json.loads(text)]


def effective_settings(
    tmp_path: Path, env: dict[str, str], argv: list[str], files: dict[str, Path], workdir: str
) -> Settings:
    """The settings ``tensorgate serve`` starts with, given the process's env, argv and files.

    ``files`` maps absolute paths in the container to files here; they are laid out under a
    scratch root, the config file is read from there, and paths are mapped back.
    """
    root = tmp_path / "container"
    for inside, here in files.items():
        target = root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(here.read_bytes())
    assert argv[:2] == ["tensorgate", "serve"], argv
    args = _parser().parse_args(argv[1:])
    config = args.config if args.config is not None else env.get("TENSORGATE_CONFIG")
    config_file = None
    if config is not None:
        config_file = root / str(config).lstrip("/")
        assert config_file.is_file(), f"{config}: no such file in the container"
    # As gateway.cli.serve does; TENSORGATE_CONFIG is dropped since config_file already names it.
    environ = {k: v for k, v in env.items() if k != "TENSORGATE_CONFIG"}
    settings = load_settings(config_file, environ=environ, overrides={k: getattr(args, k) for k in setting_types()})
    mapped: dict[str, Path] = {}
    for name in setting_types():
        value = getattr(settings, name)
        if isinstance(value, Path):
            if value.is_relative_to(root):
                mapped[name] = Path("/") / value.relative_to(root)
            elif not value.is_absolute():
                mapped[name] = Path(workdir) / value  # relative to the working directory
    return replace(settings, **mapped)


def written_paths(settings: Settings) -> dict[str, PurePosixPath]:
    """Every path the server creates or writes, by what it is."""
    return {
        "state_dir": PurePosixPath(settings.state_dir),
        "admin token file": PurePosixPath(settings.state_dir / TOKEN_FILE),
        "predlog hash key": PurePosixPath(settings.state_dir / PREDLOG_KEY_FILE),
        "log_dir": PurePosixPath(settings.log_dir),
        "registry_cache_dir": PurePosixPath(settings.registry_cache_dir),
    }


def mount_of(path: PurePosixPath, mounts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The volume mount ``path`` lies on (the deepest one), if any."""
    holding = [m for m in mounts if path == PurePosixPath(m["mountPath"]) or path.is_relative_to(m["mountPath"])]
    return max(holding, key=lambda m: len(m["mountPath"]), default=None)


def pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """The StatefulSet's pod spec and its one container."""
    spec = one("StatefulSet")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def pod_settings(tmp_path: Path) -> Settings:
    """The settings a tensorgate pod runs with."""
    spec, container = pod()
    env = image_env()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = "a-token-from-the-secret-0123456789"
        elif "resourceFieldRef" in item["valueFrom"]:  # as the kubelet resolves it: the limit, rounded up
            ref = item["valueFrom"]["resourceFieldRef"]
            limit = container["resources"]["limits"][ref["resource"].removeprefix("limits.")]
            env[item["name"]] = str(math.ceil(float(limit) / float(ref.get("divisor", "1"))))
        elif item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
            env[item["name"]] = "tensorgate-0"
    volumes = {v["name"]: v for v in spec["volumes"]}
    files = {}
    for mount in container["volumeMounts"]:
        source = volumes.get(mount["name"], {})
        if "configMap" in source:
            data = one("ConfigMap", source["configMap"]["name"])["data"]
            for key, text in data.items():
                here = tmp_path / "configmaps" / mount["name"] / key
                here.parent.mkdir(parents=True, exist_ok=True)
                here.write_text(text)
                files[f"{mount['mountPath']}/{key}"] = here
    # A mount hides what the image has below it.
    image = {p: f for p, f in image_files().items() if mount_of(PurePosixPath(p), container["volumeMounts"]) is None}
    argv = container.get("command", entrypoint()) + container.get("args", [])
    (workdir,) = instructions(dockerfile_stages()[-1], "WORKDIR")
    return effective_settings(tmp_path, env, argv, {**image, **files}, container.get("workingDir", workdir))


def test_every_path_a_pod_writes_is_on_its_own_persistent_volume(tmp_path: Path) -> None:
    settings = pod_settings(tmp_path)
    _, container = pod()
    mounts = container["volumeMounts"]
    claims = {t["metadata"]["name"] for t in one("StatefulSet")["spec"]["volumeClaimTemplates"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # so nothing else is writable
    for what, path in written_paths(settings).items():
        mount = mount_of(path, mounts)
        assert mount is not None, f"{what} {path} is on the read-only root file system"
        assert not mount.get("readOnly", False), f"{what} {path} is on a read-only mount"
        # One claim per ordinal, mounted whole: a replaced pod finds its routes again.
        assert mount["name"] in claims, f"{what} {path} is not on the replica's persistent volume"
        assert "subPath" not in mount and "subPathExpr" not in mount, f"{what} {path}: per-pod subpaths start empty"
    assert mount_of(PurePosixPath(settings.repository), mounts)["name"] == "models"  # type: ignore[index]
    assert (settings.port, settings.admin_port, settings.host) == (8000, 8080, "0.0.0.0")


def test_the_image_writes_only_under_its_volumes(tmp_path: Path) -> None:
    """``docker run`` without a config: the image's own tensorgate.toml, ENV and ENTRYPOINT."""
    (workdir,) = instructions(dockerfile_stages()[-1], "WORKDIR")
    settings = effective_settings(tmp_path, image_env(), entrypoint(), image_files(), workdir)
    volumes = [{"mountPath": v, "name": v} for v in image_volumes()]
    for what, path in written_paths(settings).items():
        assert mount_of(path, volumes) is not None and not path.is_relative_to("/models"), f"{what} {path}"
    assert mount_of(PurePosixPath(settings.repository), volumes) == {"mountPath": "/models", "name": "/models"}
    assert (settings.host, settings.port, settings.grpc_port) == ("0.0.0.0", 8000, 8001)
    # Both ports the image serves are declared (docker run -P publishes them).
    assert instructions(dockerfile_stages()[-1], "EXPOSE") == [f"{settings.port} {settings.grpc_port}"]
    # No server setting in the image's ENV: it would override every config file (the 0.1.0 bug).
    assert [k for k in image_env() if k.startswith("TENSORGATE_")] == ["TENSORGATE_CONFIG"]
    # The runtime user's home is the data volume, so nothing writes to the root file system.
    (useradd,) = [r for r in instructions(dockerfile_stages()[-1], "RUN") if "useradd" in r]
    assert "--home-dir /data" in useradd and "/data" in image_volumes()


def test_the_configmap_is_a_valid_tensorgate_toml(tmp_path: Path) -> None:
    text = one("ConfigMap")["data"]["tensorgate.toml"]
    (tmp_path / "tensorgate.toml").write_text(text)
    settings = load_settings(tmp_path / "tensorgate.toml", environ={})
    assert settings.host == "0.0.0.0" and settings.repository == Path("/models")
    for path in (settings.state_dir, settings.log_dir, settings.registry_cache_dir):
        assert path.is_relative_to("/data"), path


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_pods_probes_ports_volumes_and_drain_fit_the_server(tmp_path: Path) -> None:
    settings = pod_settings(tmp_path)
    spec, container = pod()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "admin": settings.admin_port, "grpc": settings.grpc_port}
    paths = served_paths()
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {"/v2/health/ready", "/v2/health/live", "/metrics"} <= paths
    # preStop sleep, then the drain and the prediction log's flush, must end before SIGKILL.
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert sleep + settings.graceful_timeout_s + PREDLOG_CLOSE_S <= spec["terminationGracePeriodSeconds"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # One worker per CPU of the limit; the CPU request is the limit (a Guaranteed pod).
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert settings.workers == int(limits["cpu"]) >= 2 and requests["cpu"] == limits["cpu"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {c["metadata"]["name"] for c in yaml.safe_load_all((KUBERNETES / "storage.yaml").read_text())}
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v} <= claims


def test_the_pod_is_locked_down() -> None:
    spec, container = pod()
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}


def test_services_servicemonitor_and_budget_select_the_pods() -> None:
    statefulset = one("StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    service = one("Service", "tensorgate")
    assert service["spec"]["selector"] == labels
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    assert service["spec"]["ports"][1]["appProtocol"] == "kubernetes.io/h2c"  # gRPC is HTTP/2 cleartext
    headless = one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"] == labels
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["admin"]
    monitor = one("ServiceMonitor")
    selected = [s for s in objects() if s["kind"] == "Service"
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]  # fmt: skip
    assert selected == [service]  # the admin Service is not scraped
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels


def test_the_network_policy_opens_inference_to_all_and_admin_to_the_pipeline() -> None:
    policy = one("NetworkPolicy")
    labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == labels and policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"http", "admin"} and len(rules["admin"]["ports"]) == 1
    assert [p["port"] for p in rules["http"]["ports"]] == ["http", "grpc"]
    assert "from" not in rules["http"]  # clients: inference, health, metadata, metrics, and gRPC
    (source,) = rules["admin"]["from"]
    assert source["podSelector"]["matchLabels"] == {"tensorgate.io/admin-client": "true"}


# Building the image (tested without a Docker daemon) ---------------------------------------------

STAND_IN_PIP = """#!{python}
import json, os, sys
from pip._internal.req.constructors import install_req_from_line
with open(os.environ["PIP_CALLS"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "install":
    for spec in (a for a in sys.argv[2:] if not a.startswith("-")):
        install_req_from_line(spec)  # pip's own parsing: "/src[]" fails here as in a real build
"""


def build_with(tmp_path: Path, extras: str) -> list[list[str]]:
    """Run the build stage's install step as the Dockerfile does, with a stand-in pip; its calls."""
    venv = tmp_path / f"venv-{extras or 'none'}"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "pip").write_text(STAND_IN_PIP.format(python=sys.executable))
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 1.31.1\n")  # asked which onnxruntime-gpu is installed
    for tool in ("pip", "python"):
        (venv / "bin" / tool).chmod(0o755)
    build = dockerfile_stages()[0]
    assert instructions(build, "ARG") == ["EXTRAS=cuda"]  # the default image is the CUDA one
    assert "deploy/docker/install /src/install" in instructions(build, "COPY")
    (step,) = [r for r in instructions(build, "RUN") if r.startswith("/src/install")]
    command = step.replace("/src/install", str(DEPLOY / "docker" / "install"))
    command = command.replace("/opt/tensorgate", str(venv)).replace(" /src ", f" {ROOT} ")
    calls = tmp_path / f"calls-{extras or 'none'}.jsonl"
    env = {**os.environ, "EXTRAS": extras, "PIP_CALLS": str(calls)}
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_the_stand_in_pip_refuses_what_pip_refuses() -> None:
    from pip._internal.exceptions import InstallationError
    from pip._internal.req.constructors import install_req_from_line

    with pytest.raises(InstallationError):
        install_req_from_line(f"{ROOT}[]")  # what `--build-arg EXTRAS=` ran before


def test_the_cuda_image_installs_the_cuda_extra(tmp_path: Path) -> None:
    assert build_with(tmp_path, "cuda") == [["install", f"{ROOT}[cuda]"]]
    assert build_with(tmp_path, "cuda,mlflow") == [["install", f"{ROOT}[cuda,mlflow]"]]


@pytest.mark.parametrize(("extras", "spec"), [("", ""), ("mlflow", "[mlflow]")])
def test_a_cpu_only_image_builds_with_onnx_runtimes_cpu_build(tmp_path: Path, extras: str, spec: str) -> None:
    assert build_with(tmp_path, extras) == [
        ["install", f"{ROOT}{spec}"],
        ["uninstall", "--yes", "onnxruntime-gpu"],
        ["install", "onnxruntime==1.31.1"],  # the same release, CPU only
    ]


def test_every_extra_the_docs_build_with_exists() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = (ROOT / "Dockerfile").read_text() + (ROOT / "docs" / "operations.md").read_text()
    for used in re.findall(r"--build-arg EXTRAS=([\w,]*)", text):
        assert set(filter(None, used.split(","))) <= extras, used


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative, /-separated) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        body = pattern.removeprefix("**/")
        for prefix in prefixes:
            candidates = [prefix] if body == pattern else [prefix, prefix.rsplit("/", 1)[-1]]
            if any(fnmatch.fnmatchcase(c, body) for c in candidates):
                return True
    return False


def test_dockerignore_leaves_every_local_environment_out() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    local = [".git", ".venv", ".venv-triton", ".venv-mlflow", ".venv-anything", ".tensorgate", "examples/.tensorgate",
             ".mypy_cache", ".ruff_cache", ".pytest_cache", "gateway/__pycache__", "gateway/api/x.pyc",
             "tensorgate.egg-info", "build", "dist", ".peers"]  # fmt: skip
    # And whatever git ignores here (environments, caches) that this checkout has.
    ignored = subprocess.run(
        ["git", "status", "--ignored", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    local += [line[3:].rstrip("/") for line in ignored.splitlines() if line.startswith("!! ")]
    assert [p for p in local if not dockerignored(p, patterns)] == []
    needed = ["pyproject.toml", "README.md", "gateway/app.py", "routing", "runtimes", "deploy/docker/install",
              "deploy/docker/tensorgate.toml"]  # fmt: skip
    assert [p for p in needed if dockerignored(p, patterns)] == []


def test_the_healthcheck_asks_the_port_the_server_listens_on(tmp_path: Path) -> None:
    (text,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    command = json.loads(text[text.index("CMD") + 3 :])
    assert command[0] == "python"
    write_model(tmp_path / "models", "m", 1, identity("FP32"))
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "TENSORGATE_CONFIG": str(DEPLOY / "docker" / "tensorgate.toml"),
    }
    with serve(tmp_path / "models") as server:
        env["TENSORGATE_PORT"] = str(server.port)  # `docker run -e TENSORGATE_PORT=...`
        healthy = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=60, check=False)
        assert healthy.returncode == 0, healthy.stderr
    unhealthy = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=60, check=False)
    assert unhealthy.returncode != 0


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every metric name a live server exposes (families and samples), after some traffic."""
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "m", 1, identity("FP32"), config="max_batch_size = 4\n")
    body = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    with serve(root, grpc=True) as server:  # the gRPC families are registered with the listener
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


def test_the_fleet_overlay_runs_three_replicas_on_the_store_url_from_a_secret(tmp_path: Path) -> None:
    overlay = yaml.safe_load((DEPLOY / "kubernetes-fleet" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../kubernetes"]
    (patch,) = overlay["patches"]
    assert patch["target"] == {"kind": "StatefulSet", "name": "tensorgate"}
    statefulset = one("StatefulSet")
    for op in yaml.safe_load(patch["patch"]):  # the JSON patch, applied as kustomize does
        *parents, last = op["path"].strip("/").split("/")
        node: Any = statefulset
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add" and last == "-":
            node.append(op["value"])
        else:
            assert op["op"] == "replace" and last in node, op
            node[last] = op["value"]
    assert statefulset["spec"]["replicas"] == 3
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    reference = env["TENSORGATE_STATE_STORE"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "tensorgate-state-store", "key": "url"}
    assert "state_store" not in one("ConfigMap")["data"]["tensorgate.toml"]  # the password stays in the Secret
    settings = load_settings(environ={"TENSORGATE_STATE_STORE": "rediss://:secret@redis:6380/0"})
    assert settings.state_store == "rediss://:secret@redis:6380/0"
