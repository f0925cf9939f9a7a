"""The locust file runs against a real server: clients and the release pipeline, no failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import ADMIN_TOKEN, admin, serve

ROOT = Path(__file__).resolve().parent.parent
LOCUST = Path(sys.executable).parent / "locust"


@pytest.mark.skipif(not LOCUST.exists() and shutil.which("locust") is None, reason="locust not installed")
def test_a_short_headless_run_with_the_release_pipeline(tmp_path: Path) -> None:
    with serve(ROOT / "examples" / "models", max_concurrent_requests=4096) as server:
        env = {**os.environ, "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN, "TG_RELEASE_PAUSE_S": "0.5"}
        done = subprocess.run(
            [str(LOCUST if LOCUST.exists() else "locust"), "-f", str(ROOT / "loadtests" / "locustfile.py"),
             "--host", server.url, "--headless", "-u", "6", "-r", "6", "-t", "4s", "--only-summary",
             "--csv", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120, env=env, check=False, cwd=tmp_path,
        )  # fmt: skip
        history = admin(server, "GET", "/admin/models/fraud/history").json()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = next(line for line in done.stdout.splitlines() if line.startswith("tensorgate: "))
    assert ", 0 failures," in summary
    stats = (tmp_path / "run_stats.csv").read_text()
    for name in ("routed json", "routed binary", "pinned v1", "admin: canary 10%", "admin: swap"):
        assert name in stats, name
    actions = [entry["action"] for entry in history["history"]]  # type: ignore[index]
    assert "swap" in actions and all(entry["actor"] == "locust" for entry in history["history"][1:])  # type: ignore[index]
