"""Seams of the architecture (docs/architecture.md): what imports what, and the one error path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.exceptions import HTTPException

from gateway.api.responses import error_reply, reply_for
from gateway.config_error import ConfigError
from gateway.errors import GatewayError, LoadFailed, LoadTimedOut, StoreFailed
from gateway.loader import load_runtime
from gateway.registry.base import Artifact
from gateway.registry.config import parse_model_config
from runtimes.devices import Devices
from runtimes.kinds import RUNTIME_KINDS, RuntimeKind
from runtimes.options import OptionsTable


def imported_after(statement: str, roots: set[str]) -> list[str]:
    """The modules under ``roots`` that a fresh interpreter has loaded after ``statement``."""
    code = f"import sys; {statement}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(roots)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return list(orjson.loads(out.strip().replace("'", '"')))


def test_parsing_a_model_config_loads_no_runtime_library() -> None:
    heavy = {"onnxruntime", "onnx", "tritonclient", "grpc", "numpy"}
    assert imported_after("import gateway.registry.config", heavy) == []


def test_routing_and_runtimes_import_nothing_http() -> None:
    http = {"starlette", "uvicorn", "httptools", "gateway"}
    assert imported_after("import routing.router, runtimes.kinds, runtimes.options", http) == []


def test_a_runtime_kind_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loaded: list[tuple[Path, object]] = []
    runtime: Any = object()  # what the kind's loader builds

    def parse(t: OptionsTable) -> int:
        threads = t.integer("threads", 1, 1, 64)
        t.check_unknown()
        return threads

    def load(model_file: Path, options: object, devices: Devices) -> Any:
        loaded.append((model_file, options))
        return runtime

    kind = RuntimeKind(
        "echo", "echo_platform", "echo", remote=False, module="runtimes.base",
        default_options=lambda: 1, parse_options=parse, load=load,
    )  # fmt: skip
    monkeypatch.setitem(RUNTIME_KINDS, "echo", kind)
    config = parse_model_config({"runtime": "echo", "echo": {"threads": 4}}, "m/config.toml")
    assert (config.runtime, config.options) == ("echo", 4)
    with pytest.raises(ConfigError, match=r"m/config.toml: echo.bogus: unknown key"):
        parse_model_config({"echo": {"bogus": 1}}, "m/config.toml")
    artifact = Artifact("m", 1, tmp_path, tmp_path / "model.bin", None)
    assert load_runtime(Devices(0, False), artifact, config) is runtime
    assert loaded == [(tmp_path / "model.bin", 4)]


@pytest.mark.parametrize(
    ("error", "status"),
    [(LoadFailed("x"), 502), (LoadTimedOut("x"), 504), (StoreFailed("x", 5), 503), (GatewayError("x"), 500)],
)
def test_every_error_class_has_one_status(error: GatewayError, status: int) -> None:
    reply = reply_for(error)
    assert reply.status == status == type(error).status
    assert orjson.loads(reply.body) == {"error": "x"}


def test_one_encoding_for_every_error() -> None:
    assert reply_for(StoreFailed("full", 5)).headers[-1] == (b"retry-after", b"5")
    assert reply_for(HTTPException(405)).body == error_reply(405, "method not allowed").body
    hidden = reply_for(RuntimeError("/secret/path"))  # our bug: nothing of it reaches the client
    assert (hidden.status, orjson.loads(hidden.body)) == (500, {"error": "internal error"})
    assert error_reply(413, "too big").headers[:2] == [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(b'{"error":"too big"}')),
    ]
