"""``tensorgate rollout ...``, ``apply`` and ``validate`` as a pipeline runs them, against a live gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.onnx_models import add_sub, identity, write_model
from tests.server import ADMIN_TOKEN, RunningServer, admin
from tests.test_rollout_e2e import POISON, Traffic, fails_past, gateway, repository
from tests.test_rollout_e2e import identity as same

ROOT = Path(__file__).resolve().parent.parent
FAST = {"interval_s": 0.5, "min_requests": 3, "max_error_rate": 0.05}


def tensorgate(server: RunningServer | None, *args: str, timeout_s: float = 120) -> tuple[int, Any, str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_ADMIN_TOKEN"}
    env["TENSORGATE_ADMIN_TOKEN"] = ADMIN_TOKEN
    url = ["--url", server.url] if server is not None else []
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, *url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    try:
        doc = json.loads(done.stdout) if done.stdout.strip() else None
    except ValueError:
        doc = done.stdout
    return done.returncode, doc, done.stderr


def test_start_status_pause_resume_promote_and_wait(tmp_path: Path) -> None:
    spec = tmp_path / "rollout.toml"
    spec.write_text('to = "2"\nsteps = [{weight = 10, pause_s = 600}]\n[analysis]\ninterval_s = 0.5\n')
    with gateway(repository(tmp_path / "models", same()), tmp_path / "state") as server:
        code, doc, err = tensorgate(server, "rollout", "start", "m", "-f", str(spec), "--reason", "weekly")
        assert code == 0, err
        assert doc["phase"] == "progressing" and doc["weights"] == {"1": 90, "2": 10}
        code, doc, _ = tensorgate(server, "rollout", "start", "m", "-f", str(spec))
        assert code == 1  # 409: one at a time
        code, doc, _ = tensorgate(server, "rollout", "status", "m")
        assert code == 0 and doc["to"] == "2"
        assert tensorgate(server, "rollout", "pause", "m")[1]["phase"] == "paused"
        assert tensorgate(server, "rollout", "resume", "m")[1]["phase"] == "progressing"
        code, doc, err = tensorgate(server, "rollout", "wait", "m", "--timeout", "1", "--poll", "0.2")
        assert code == 2 and "not over" in err
        assert tensorgate(server, "rollout", "promote", "m", "--actor", "ci")[1]["phase"] == "promoted"
        code, doc, _ = tensorgate(server, "rollout", "wait", "m")
        assert code == 0 and doc["phase"] == "promoted"
        entry = next(e for e in admin(server, "GET", "/admin/models/m/history").json()["history"]  # type: ignore[index]
                     if e.get("rollout_action") == "rollout-promote")  # fmt: skip
        assert entry["actor"] == "ci"


def test_wait_exits_1_on_an_abort_and_2_on_errors(tmp_path: Path) -> None:
    spec = tmp_path / "rollout.json"
    spec.write_text(json.dumps({"to": "2", "steps": [{"weight": 50, "pause_s": 60}], "analysis": FAST}))
    with gateway(repository(tmp_path / "models", fails_past(POISON)), tmp_path / "state") as server:
        code, doc, err = tensorgate(server, "rollout", "wait", "m", "--timeout", "5")
        assert code == 2 and "404" in err  # never had a rollout
        with Traffic(server, poison=0.5):
            assert tensorgate(server, "rollout", "start", "m", "-f", str(spec))[0] == 0
            code, doc, err = tensorgate(server, "rollout", "wait", "m", "--timeout", "60", "--poll", "0.2")
        assert code == 1 and doc["phase"] == "aborted", err
        assert "aborted" in err
    code, _, err = tensorgate(None, "rollout", "wait", "m", "--url", "http://127.0.0.1:9", "--timeout", "0.5")
    assert code == 2


def test_a_bad_spec_fails_before_any_call(tmp_path: Path) -> None:
    spec = tmp_path / "rollout.json"
    spec.write_text(json.dumps({"to": "2", "steps": [{"weight": 500}]}))
    code, _, err = tensorgate(None, "rollout", "start", "m", "-f", str(spec), "--url", "http://127.0.0.1:9")
    assert code == 1 and "weight" in err and "cannot reach" not in err
    (tmp_path / "broken.toml").write_text("to = \n")
    code, _, err = tensorgate(None, "rollout", "start", "m", "-f", str(tmp_path / "broken.toml"))
    assert code == 1 and "not valid toml" in err


RELEASE = """
[models.m.rollout]
to = "2"
steps = [{weight = 20, pause_s = 600}]
analysis = {interval_s = 0.5}

[models.other.route]
weights = {"1" = 100}
"""

RELEASE_YAML = """
models:
  m:
    rollout: {to: "2", steps: [{weight: 20, pause_s: 600}], analysis: {interval_s: 0.5}}
  other:
    route: {weights: {"2": 100}}
"""


def test_apply_dry_run_apply_and_apply_again_changes_nothing(tmp_path: Path) -> None:
    repo = repository(tmp_path / "models", same())
    write_model(tmp_path / "models", "other", 1, add_sub(0))
    write_model(tmp_path / "models", "other", 2, add_sub(100))
    release = tmp_path / "release.toml"
    release.write_text(RELEASE)
    with gateway(repo, tmp_path / "state") as server:
        # other serves version 2 (the highest): the file wants 1 back, and m's rollout to start.
        admin(server, "POST", "/admin/models/other/versions/1/load")
        code, doc, err = tensorgate(server, "apply", "-f", str(release), "--dry-run")
        assert code == 0, err
        assert "~ m: start a rollout to version 2" in err and "~ other: route 2=100 -> 1=100" in err
        assert admin(server, "GET", "/admin/models/m/rollouts/current").status == 404  # nothing happened
        code, doc, err = tensorgate(server, "apply", "-f", str(release))
        assert code == 0 and [c["applied"] for c in doc["changes"]] == [True, True], err
        assert admin(server, "GET", "/admin/models/other/route").json()["weights"] == {"1": 100}  # type: ignore[index]
        assert admin(server, "GET", "/admin/models/m/rollouts/current").json()["phase"] == "progressing"  # type: ignore[index]
        seq = len(admin(server, "GET", "/admin/models/m/history").json()["history"])  # type: ignore[index]
        code, doc, err = tensorgate(server, "apply", "-f", str(release))
        assert code == 0 and [c["change"] for c in doc["changes"]] == ["unchanged", "unchanged"], err
        assert len(admin(server, "GET", "/admin/models/m/history").json()["history"]) == seq  # type: ignore[index]
        yaml_release = tmp_path / "release.yaml"
        yaml_release.write_text(RELEASE_YAML)
        code, doc, err = tensorgate(server, "apply", "-f", str(yaml_release), "--dry-run")
        assert code == 0 and "= m: rollout to 2 already progressing" in err and "~ other: route 1=100 -> 2=100" in err
        (tmp_path / "bad.toml").write_text('[models.m]\nroute = {weights = {"1" = 100}}\nrollout = {to = "2"}\n')
        code, _, err = tensorgate(server, "apply", "-f", str(tmp_path / "bad.toml"))
        assert code == 1 and "either a route or a rollout" in err
        # A dry run refuses what the gateway would refuse: a bad route, an unknown model.
        (tmp_path / "half.toml").write_text('[models.other.route]\nweights = {"2" = 50}\n')
        code, _, err = tensorgate(server, "apply", "-f", str(tmp_path / "half.toml"), "--dry-run")
        assert code == 1 and "models.other.route: invalid route" in err and "sum to 100" in err, err
        (tmp_path / "nope.toml").write_text('[models.nope.route]\nweights = {"1" = 100}\n')
        code, _, err = tensorgate(server, "apply", "-f", str(tmp_path / "nope.toml"), "--dry-run")
        assert code == 1 and "404" in err and "nope" in err, err
        # A change the gateway refuses is not reported as made.
        (tmp_path / "absent.toml").write_text('[models.other.route]\nweights = {"7" = 100}\n')
        code, _, err = tensorgate(server, "apply", "-f", str(tmp_path / "absent.toml"))
        assert code == 1 and "! other: route 1=100 -> 7=100: refused" in err and "+ other" not in err, err
        assert admin(server, "GET", "/admin/models/other/route").json()["weights"] == {"1": 100}  # type: ignore[index]


def test_validate_compares_with_the_serving_version_and_runs_samples(tmp_path: Path) -> None:
    with gateway(repository(tmp_path / "models", same()), tmp_path / "state") as server:
        good = write_model(tmp_path / "new", "m", 3, same())
        code, doc, err = tensorgate(server, "validate", "m", "-f", str(good))
        assert code == 0 and doc["ok"] and doc["samples_run"] == 8, err
        other = write_model(tmp_path / "new", "m", 4, identity("INT32", [-1, 4]))
        code, doc, err = tensorgate(server, "validate", "m", "-f", str(other))
        assert code == 1 and not doc["ok"] and ("missing" in err or "INT32" in err), err
        (tmp_path / "junk.onnx").write_bytes(b"not onnx")
        code, doc, err = tensorgate(server, "validate", "m", "-f", str(tmp_path / "junk.onnx"))
        assert code == 1 and "does not load" in err
        code, doc, err = tensorgate(server, "validate", "nope", "-f", str(good))
        assert code == 2


@pytest.mark.parametrize(
    "argv",
    [["rollout", "--help"], ["rollout", "wait", "--help"], ["apply", "--help"], ["validate", "--help"],
     ["rollout", "status", "m", "--url", "http://127.0.0.1:9"]],
)  # fmt: skip
def test_the_rollout_commands_import_nothing_heavy(argv: list[str]) -> None:
    from tests.test_cli import _IMPORTS, HEAVY

    done = subprocess.run([sys.executable, "-c", _IMPORTS, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
