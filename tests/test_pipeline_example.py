"""examples/pipelines/github-actions.yml, run: its ``run:`` steps in order against a live gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from tests.onnx_models import identity as int_identity
from tests.onnx_models import write_model
from tests.server import ADMIN_TOKEN, RunningServer, admin, serve
from tests.test_rollout_e2e import CONFIG, Traffic, identity

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "pipelines" / "github-actions.yml"


def run_workflow(server: RunningServer, repository: Path, new_model: Path, workdir: Path) -> list[tuple[str, int]]:
    """Each step's name and exit status, as GitHub runs them (bash -eo pipefail, $GITHUB_ENV carried)."""
    doc: Any = yaml.safe_load(WORKFLOW.read_text())
    job = doc["jobs"]["release"]
    github_env = workdir / "github_env"
    github_env.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENSORGATE_", "MLFLOW_"))}
    env.update({k: str(v) for k, v in job["env"].items() if "${{" not in str(v)})
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",  # the checkout's own tensorgate
        "TENSORGATE_URL": server.url, "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN, "MLFLOW_TRACKING_URI": "",
        "REPOSITORY": str(repository), "MODEL": "m", "NEW_MODEL": str(new_model),
        "STEP_PAUSE_S": "0.5", "INTERVAL_S": "0.5", "MIN_REQUESTS": "3", "WAIT_TIMEOUT_S": "90",
        "MAX_P99_RATIO": "1000",  # the same model both sides: only a stalled CI machine differs
        "GITHUB_ENV": str(github_env), "GITHUB_RUN_ID": "42", "GITHUB_ACTOR": "octocat",
    })  # fmt: skip
    results: list[tuple[str, int]] = []
    failed = False
    for step in job["steps"]:
        if "run" not in step or step.get("id") == "install":
            continue
        if failed and step.get("if") != "always()":
            continue
        for line in github_env.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        script = workdir / "step.sh"
        script.write_text(step["run"])
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workdir,
                              env=env, capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
        results.append((step["name"], done.returncode))
        failed = failed or done.returncode != 0
    return results


def test_the_workflow_releases_a_healthy_model(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model(repository, "m", 1, identity(), config=CONFIG)
    new_model = write_model(tmp_path / "candidate", "m", 1, identity())
    with serve(repository, state_dir=tmp_path / "state") as server, Traffic(server):
        steps = run_workflow(server, repository, new_model, tmp_path)
        route: Any = admin(server, "GET", "/admin/models/m/route").json()
        rollout: Any = admin(server, "GET", "/admin/models/m/rollouts/current").json()
    assert [code for _, code in steps] == [0] * len(steps), steps
    assert len(steps) == 5  # validate, register, start, wait, show
    assert (repository / "m" / "2" / "model.onnx").exists()
    assert route["weights"] == {"2": 100} and rollout["phase"] == "promoted"
    assert rollout["actor"] == "github:octocat" and rollout["reason"] == "release-model run 42"


def test_the_workflow_stops_at_validate_on_a_mismatched_model(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model(repository, "m", 1, identity(), config=CONFIG)
    new_model = write_model(tmp_path / "candidate", "m", 1, int_identity("INT32", ["batch", 4]))
    with serve(repository, state_dir=tmp_path / "state") as server:
        steps = run_workflow(server, repository, new_model, tmp_path)
        assert admin(server, "GET", "/admin/models/m/rollouts/current").status == 404
    assert steps[0] == ("Validate the new model against the serving version", 1)
    assert [name for name, _ in steps[1:]] == ["Show the rollout and its audit trail"]  # if: always()
    assert not (repository / "m" / "2").exists()
