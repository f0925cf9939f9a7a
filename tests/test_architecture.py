"""Seams of the architecture (docs/architecture.md): what imports what, and the one error path."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from starlette.exceptions import HTTPException

from gateway.api.responses import error_reply, reply_for
from gateway.errors import GatewayError, LoadFailed, LoadTimedOut, StoreFailed


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
