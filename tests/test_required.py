"""CI fails when a real-server suite could not run; elsewhere it is a skip, and a missing GPU stays one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.required import servers_required

ROOT = Path(__file__).resolve().parent.parent

SUITE = """
import pytest
from tests.required import server_unavailable

def test_against_a_real_server():
    server_unavailable("the Triton server could not start")

def test_on_a_gpu():
    pytest.skip("no GPU here")
"""
MODULE = """
from tests.required import import_or_unavailable
missing = import_or_unavailable("tensorgate_no_such_module", "the extra is not installed")

def test_never_runs():
    pass
"""


def run_suite(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(source)
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "TENSORGATE_REQUIRE_SERVERS")}
    environ.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "test_suite.py"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_on_a_developers_machine_both_are_skips(tmp_path: Path) -> None:
    done = run_suite(tmp_path, SUITE)
    assert done.returncode == 0 and "2 skipped" in done.stdout, done.stdout


@pytest.mark.parametrize("env", [{"TENSORGATE_REQUIRE_SERVERS": "1"}, {"CI": "true"}], ids=["scripts-test", "ci"])
def test_where_required_a_missing_server_fails_and_a_missing_gpu_skips(tmp_path: Path, env: dict[str, str]) -> None:
    done = run_suite(tmp_path, SUITE, **env)
    assert done.returncode == 1 and "1 failed, 1 skipped" in done.stdout, done.stdout
    assert "the Triton server could not start" in done.stdout


def test_an_explicit_zero_wins_over_ci(tmp_path: Path) -> None:
    done = run_suite(tmp_path, SUITE, CI="true", TENSORGATE_REQUIRE_SERVERS="0")
    assert done.returncode == 0 and "2 skipped" in done.stdout, done.stdout


def test_a_missing_client_library_fails_the_suite_where_required(tmp_path: Path) -> None:
    skipped = run_suite(tmp_path, MODULE)
    assert skipped.returncode == 5 and "1 skipped" in skipped.stdout, skipped.stdout  # 5: nothing else ran
    done = run_suite(tmp_path, MODULE, CI="true")
    assert done.returncode != 0 and "tensorgate_no_such_module" in done.stdout, done.stdout


def test_the_environment_is_read_as_documented() -> None:
    assert not servers_required({})
    assert servers_required({"CI": "true"}) and servers_required({"CI": "1"})
    assert not servers_required({"CI": "false"})
    assert servers_required({"TENSORGATE_REQUIRE_SERVERS": "1"})
    assert not servers_required({"CI": "true", "TENSORGATE_REQUIRE_SERVERS": "0"})


def test_scripts_test_requires_the_servers() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    assert 'export TENSORGATE_REQUIRE_SERVERS="${TENSORGATE_REQUIRE_SERVERS:-1}"' in script
    assert script.index("TENSORGATE_REQUIRE_SERVERS") < script.index("pytest")
