"""The admin subcommands of the ``tensorgate`` command, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.onnx_models import add_sub, write_model
from tests.server import ADMIN_TOKEN, RunningServer, serve

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "simple", 1, add_sub(0), config='version_policy = "all"\n')
    write_model(root, "simple", 2, add_sub(100))
    write_model(root, "simple", 3, add_sub(200))
    with serve(root) as running:
        yield running


def tensorgate(server: RunningServer, *args: str, token: str | None = ADMIN_TOKEN) -> tuple[int, Any, str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_ADMIN_TOKEN"}
    if token is not None:
        env["TENSORGATE_ADMIN_TOKEN"] = token
    # Read-only commands take no --actor (nor --reason): nothing of theirs is audited.
    changes = args[0] not in ("models", "history") and args[:2] != ("route", "get")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--url", server.url, *(["--actor", "pipeline"] if changes else [])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


def test_a_release_through_the_cli(server: RunningServer) -> None:
    code, route, _ = tensorgate(server, "route", "set", "simple", "3=90", "2=10", "--shadow", "1=0.5",
                                "--sticky-header", "x-user-id", "--reason", "canary")  # fmt: skip
    assert code == 0
    assert route == {"seq": 1, "weights": {"2": 10, "3": 90}, "shadow": {"1": 0.5}, "sticky_header": "x-user-id"}
    assert tensorgate(server, "route", "get", "simple")[1] == route
    code, swapped, _ = tensorgate(server, "swap", "simple", "2")
    assert code == 0 and swapped["weights"] == {"2": 100}
    code, back, _ = tensorgate(server, "rollback", "simple")
    assert code == 0 and back["weights"] == {"2": 10, "3": 90}
    code, history, _ = tensorgate(server, "history", "simple")
    assert [e["action"] for e in history["history"]] == ["route", "swap", "rollback"]
    assert {e["actor"] for e in history["history"]} == {"pipeline"}
    assert history["history"][0]["reason"] == "canary"
    code, models, _ = tensorgate(server, "models")
    assert code == 0 and models["models"][0]["name"] == "simple"
    assert tensorgate(server, "load", "simple", "1")[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("route", "set", "simple", "3=90", "2=20"), "400: invalid route: weights must sum to 100"),
        (("unload", "simple", "9"), "404: version 9 of model 'simple' is not loaded"),
        (("swap", "nope", "1"), "404: model 'nope' not found"),
    ],
)
def test_failures_exit_1_with_the_servers_message(server: RunningServer, args: tuple[str, ...], message: str) -> None:
    code, out, err = tensorgate(server, *args)
    assert code == 1 and out is None
    assert message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("route", "set", "simple", "3=ninety"), "weight of version 3 is not a number"),
        (("route", "set", "simple", "390"), "expected VERSION=WEIGHT"),
        (("route", "set", "simple", "=5"), "expected VERSION=WEIGHT"),
        (("route", "set", "simple", "3=100", "--shadow", "2=abc"), "fraction of version 2 is not a number"),
        (("route", "set", "bad/name", "3=100"), "invalid model name 'bad/name'"),
        (("history", "../etc"), "invalid model name '../etc'"),
        (("rollout", "status", "a b"), "invalid model name 'a b'"),
    ],
)
def test_usage_errors_exit_2_in_one_line(server: RunningServer, args: tuple[str, ...], message: str) -> None:
    code, out, err = tensorgate(server, *args)
    assert code == 2 and out is None, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("notaurl", "--url 'notaurl' is not a gateway URL"),
        ("http://[::1", "--url 'http://[::1' is not a gateway URL"),
        ("ftp://127.0.0.1:1", "an http:// or https:// URL is needed"),
    ],
)
def test_a_bad_url_is_a_usage_error_not_a_traceback(url: str, message: str) -> None:
    env = {**os.environ, "TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run([sys.executable, "-m", "gateway", "history", "simple", "--url", url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2 and not done.stdout, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_without_a_token_or_with_a_wrong_one(server: RunningServer) -> None:
    code, _, err = tensorgate(server, "models", token=None)
    assert code == 1 and "TENSORGATE_ADMIN_TOKEN" in err
    code, _, err = tensorgate(server, "models", token="wrong-token-0123456789")
    assert code == 1 and "401: unauthorized" in err


def test_route_set_keeps_the_sticky_header_and_shadows_unless_told(server: RunningServer) -> None:
    code, route, _ = tensorgate(server, "route", "set", "simple", "3=90", "2=10", "--shadow", "1=0.5",
                                "--sticky-header", "x-user-id")  # fmt: skip
    assert code == 0 and route["shadow"] == {"1": 0.5} and route["sticky_header"] == "x-user-id"
    code, route, err = tensorgate(server, "route", "set", "simple", "3=80", "2=20")
    assert code == 0 and route["weights"] == {"2": 20, "3": 80}
    assert route["shadow"] == {"1": 0.5} and route["sticky_header"] == "x-user-id"
    assert "route of simple: weights: 2=10 3=90 -> 2=20 3=80" in err
    assert "sticky header: x-user-id kept (--no-sticky clears it)" in err and "shadow: 1=0.5 kept" in err
    # A kept shadow that the new weights give traffic stops shadowing (it cannot be both).
    code, route, err = tensorgate(server, "route", "set", "simple", "3=80", "1=20")
    assert code == 0 and route["shadow"] == {} and "shadow: 1 dropped: it now takes traffic" in err
    code, route, err = tensorgate(server, "route", "set", "simple", "3=100", "--shadow", "2=1.0", "--no-sticky")
    assert code == 0 and route == {"seq": route["seq"], "weights": {"3": 100}, "shadow": {"2": 1.0},
                                   "sticky_header": None}  # fmt: skip
    assert "sticky header: x-user-id -> none (--no-sticky)" in err
    code, route, err = tensorgate(server, "route", "set", "simple", "3=100", "--no-shadow")
    assert code == 0 and route["shadow"] == {} and "shadow: 2=1.0 -> none (--no-shadow)" in err
    code, _, err = tensorgate(server, "route", "set", "simple", "3=100", "--no-shadow", "--shadow", "2=1")
    assert code == 2 and "not allowed with argument" in err and len(err.strip().splitlines()) == 1
