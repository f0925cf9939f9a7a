"""docs/release-workflows.md's canary, run as written: each shell line of the doc, in order, against a real server.

The server is ``tensorgate serve --repository examples/models`` as ``./scripts/serve`` starts it,
in a scratch directory laid out like a checkout (a copy of ``examples/``, the real ``.venv``),
so the doc's relative paths (``.tensorgate/state/admin-token``, ``examples/models/fraud/3``,
``.venv/bin/tensorgate``) mean what they mean for a reader. Only the port differs: the commands
get it from ``TENSORGATE_URL``, the curl line by substitution.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from routing.route import sticky_bucket
from tests.rawhttp import request
from tests.server import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "release-workflows.md"
FEATURES = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]})


def shell_blocks(section: str) -> list[list[str]]:
    """The ```sh blocks of a section of the doc, each as its commands (continuation lines joined)."""
    text = DOC.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.DOTALL)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        commands.append([line for line in joined.splitlines() if line.strip() and not line.startswith("#")])
    return commands


class Checkout:
    """A scratch checkout serving the example, and the reader's shell in it."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.exports: list[str] = []

    def sh(self, line: str) -> subprocess.CompletedProcess[str]:
        """Run one line of the doc in bash, after the doc's ``export`` lines so far."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
        env["TENSORGATE_URL"] = self.url
        script = "\n".join(["set -euo pipefail", *self.exports, line])
        done = subprocess.run(["bash", "-c", script], cwd=self.root, env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        if line.startswith("export "):
            self.exports.append(line)
        return done

    def admin(self, path: str) -> Any:
        token = (self.root / ".tensorgate" / "state" / "admin-token").read_text().strip()
        reply = request(self.port, "GET", path, headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 200, reply.body
        return reply.json()

    def route(self) -> dict[str, Any]:
        route: dict[str, Any] = self.admin("/admin/models/fraud/route")
        route.pop("seq")
        return route

    def version_for(self, user: str) -> str:
        reply = request(self.port, "POST", "/v2/models/fraud/infer", FEATURES,
                        {"Content-Type": "application/json", "x-user-id": user})  # fmt: skip
        assert reply.status == 200, reply.body
        return reply.headers["x-model-version"]


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Checkout]:
    root = tmp_path / "tensorgate"
    shutil.copytree(ROOT / "examples", root / "examples")
    (root / ".venv").symlink_to(ROOT / ".venv")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}  # the token is generated
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--repository", "examples/models", "--port", str(port)],
        cwd=root, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=60)
        yield Checkout(root, port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_the_canary_of_the_release_doc_does_what_its_comments_say(checkout: Checkout) -> None:
    cli, curl = shell_blocks("A canary, step by step")
    assert len(cli) == 9 and all(line.startswith(("export ", "mkdir ", ".venv/bin/tensorgate ")) for line in cli)
    steps = iter(cli)
    assert checkout.route() == {"weights": {"2": 100}, "shadow": {}, "sticky_header": None}

    checkout.sh(next(steps))  # export TENSORGATE_ADMIN_TOKEN=$(cat .tensorgate/state/admin-token)
    checkout.sh(next(steps))  # a new version 3 arrives
    assert (checkout.root / "examples" / "models" / "fraud" / "3" / "model.onnx").is_file()

    checkout.sh(next(steps))  # load 3: READY, no traffic yet
    fraud = checkout.admin("/admin/models")["models"][0]
    assert fraud["versions"]["3"]["state"] == "READY" and checkout.route()["weights"] == {"2": 100}

    checkout.sh(next(steps))  # 10% of users on 3, sticky by x-user-id
    assert checkout.route() == {"weights": {"2": 90, "3": 10}, "shadow": {}, "sticky_header": "x-user-id"}
    users = [f"user-{i}" for i in range(400)]
    first = [u for u in users if sticky_bucket(u) >= 90]  # version 3 owns the top buckets
    assert first and all(checkout.version_for(u) == "3" for u in first[:5])

    done = checkout.sh(next(steps))  # 20%: the sticky header is kept, the first 10% stay on 3
    assert checkout.route() == {"weights": {"2": 80, "3": 20}, "shadow": {}, "sticky_header": "x-user-id"}
    assert "sticky header: x-user-id kept" in done.stderr
    assert all(checkout.version_for(u) == "3" for u in first[:5])

    checkout.sh(next(steps))  # all traffic on 2, every request mirrored to 3
    assert checkout.route() == {"weights": {"2": 100}, "shadow": {"3": 1.0}, "sticky_header": "x-user-id"}

    checkout.sh(next(steps))  # swap: 100% to 3, which stops shadowing; 2 is the standby
    assert checkout.route() == {"weights": {"3": 100}, "shadow": {}, "sticky_header": "x-user-id"}
    fraud = checkout.admin("/admin/models")["models"][0]
    assert fraud["standby"] == "2" and fraud["versions"]["2"]["state"] == "READY"

    checkout.sh(next(steps))  # rollback: the route before the swap
    assert checkout.route() == {"weights": {"2": 100}, "shadow": {"3": 1.0}, "sticky_header": "x-user-id"}

    history = orjson.loads(checkout.sh(next(steps)).stdout)["history"]
    assert [e["action"] for e in history] == ["load", "route", "route", "route", "swap", "rollback"]
    assert history[0]["reason"] == "candidate" and history[4]["reason"] == "promote"

    # The curl line: a full route (its shadow is cleared, as PUT replaces).
    assert len(curl) == 1
    checkout.sh(curl[0].replace("http://127.0.0.1:8000", checkout.url))
    assert checkout.route() == {"weights": {"2": 90, "3": 10}, "shadow": {}, "sticky_header": "x-user-id"}


def test_what_the_readme_examples_write_is_ignored_by_git() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "drift.md").read_text()
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", readme, re.DOTALL))
    written = re.findall(r"(?:> |--html |--json )([\w./-]+)", blocks)
    written.append("examples/models/fraud/3/model.onnx")  # the release doc's canary
    assert ".tensorgate/baseline.jsonl" in written and len(written) >= 4
    for path in written:
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, check=False)
        assert done.returncode == 0, f"{path} is written by an example but not ignored by .gitignore"
