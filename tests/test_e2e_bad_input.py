"""End to end, raw HTTP: every bad input gets a clear 4xx, and the server stays healthy."""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.registry.base import Artifact
from gateway.registry.config import ModelConfig
from gateway.registry.local import LocalRegistry
from tests.onnx_models import add_sub, identity, write_model
from tests.rawhttp import read_reply, request
from tests.server import RunningServer, admin, serve

LIMIT = 1024 * 1024
GOOD = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})


class RecordingRegistry(LocalRegistry):
    """The local registry, noting every call made after start-up."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []
        self.recording = False

    def _note(self, call: str) -> None:
        if self.recording:
            self.calls.append(call)

    def models(self) -> list[str]:
        self._note("models")
        return super().models()

    def versions(self, model: str) -> list[int]:
        self._note(f"versions {model}")
        return super().versions(model)

    def config(self, model: str) -> ModelConfig:
        self._note(f"config {model}")
        return super().config(model)

    def version_config(self, model: str, version: int) -> ModelConfig:
        self._note(f"version_config {model} {version}")
        return super().version_config(model, version)

    def fetch(self, model: str, version: int, remote: bool = False) -> Artifact:
        self._note(f"fetch {model} {version}")
        return super().fetch(model, version, remote)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> RecordingRegistry:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "m", 1, identity("FP32"), config='version_policy = "all"\nmax_batch_size = 8\n')
    write_model(root, "m", 2, identity("FP32"))
    write_model(root, "s", 1, identity("BYTES", ["batch"]))
    write_model(root, "simple", 1, add_sub())
    return RecordingRegistry(root)


@pytest.fixture(scope="module")
def server(registry: RecordingRegistry) -> Iterator[RunningServer]:
    with serve(registry.root, max_body_bytes=LIMIT, registry=registry) as running:
        registry.recording = True
        yield running


def assert_healthy(server: RunningServer) -> None:
    assert request(server.port, "GET", "/v2/health/live").status == 200
    reply = request(server.port, "POST", "/v2/models/m/infer", GOOD)
    assert reply.status == 200, reply.body
    assert reply.json()["outputs"][0]["data"] == [1, 2, 3, 4]  # type: ignore[index]


def infer_doc(**tensor: Any) -> bytes:
    base: dict[str, Any] = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    base.update(tensor)
    return orjson.dumps({"inputs": [base]})


CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    # (case, method, path, body, headers, status, message fragment)
    ("empty body", "POST", "/v2/models/m/infer", b"", {}, 400, "malformed JSON"),
    ("truncated JSON", "POST", "/v2/models/m/infer", GOOD[:-3], {}, 400, "malformed JSON"),
    ("not an object", "POST", "/v2/models/m/infer", b"[]", {}, 400, "JSON object"),
    ("NaN literal", "POST", "/v2/models/m/infer", GOOD.replace(b"1,", b"NaN,"), {}, 400, "malformed JSON"),
    ("no inputs", "POST", "/v2/models/m/infer", b'{"inputs": []}', {}, 400, "missing inputs: INPUT0"),
    ("no datatype", "POST", "/v2/models/m/infer", infer_doc(datatype=None), {}, 400, "input 'INPUT0' has no datatype"),
    ("datatype a list", "POST", "/v2/models/m/infer", infer_doc(datatype=["FP32"]), {}, 400, "must be a string"),
    ("datatype an object", "POST", "/v2/models/m/infer", infer_doc(datatype={}), {}, 400, "got an object"),
    (
        "missing one input",
        "POST",
        "/v2/models/simple/infer",
        orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}]}),
        {},
        400,
        "missing inputs: INPUT1",
    ),
    ("unknown input", "POST", "/v2/models/m/infer", infer_doc(name="X"), {}, 400, "unknown input 'X'"),
    ("wrong datatype", "POST", "/v2/models/m/infer", infer_doc(datatype="INT64"), {}, 400, "does not match"),
    ("string data", "POST", "/v2/models/m/infer", infer_doc(data=["1"] * 4), {}, 400, "must be numbers"),
    ("element count", "POST", "/v2/models/m/infer", infer_doc(data=[1, 2, 3]), {}, 400, "needs 4 elements"),
    ("huge shape", "POST", "/v2/models/m/infer", infer_doc(shape=[2**31, 2**31]), {}, 400, "does not match"),
    ("huge batch", "POST", "/v2/models/m/infer", infer_doc(shape=[2**60 + 2, 4]), {}, 400, "max_batch_size"),
    (
        "huge count",
        "POST",
        "/v2/models/simple/infer",
        orjson.dumps(
            {
                "inputs": [
                    {"name": n, "datatype": "INT32", "shape": [2**40, 16], "data": [0] * 16}
                    for n in ("INPUT0", "INPUT1")
                ]
            }
        ),
        {},
        400,
        "more than the body holds",
    ),
    (
        "batch over max",
        "POST",
        "/v2/models/m/infer",
        infer_doc(shape=[9, 4], data=[0] * 36),
        {},
        400,
        "exceeds the model's max_batch_size 8",
    ),
    ("negative dim", "POST", "/v2/models/m/infer", infer_doc(shape=[1, -4]), {}, 400, "positive integers"),
    (
        "deep data",
        "POST",
        "/v2/models/m/infer",
        infer_doc(data=eval("[" * 120 + "1" + "]" * 120)),
        {},
        400,
        "nesting depth",
    ),
    ("deep body", "POST", "/v2/models/m/infer", b"[" * 150_000 + b"]" * 150_000, {}, 400, "malformed JSON"),
    (
        "duplicate output",
        "POST",
        "/v2/models/m/infer",
        orjson.dumps(orjson.loads(GOOD) | {"outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]}),
        {},
        400,
        "twice",
    ),
    (
        "model_name mismatch",
        "POST",
        "/v2/models/m/infer",
        orjson.dumps(orjson.loads(GOOD) | {"model_name": "s"}),
        {},
        400,
        "differs",
    ),
    ("text/plain", "POST", "/v2/models/m/infer", GOOD, {"Content-Type": "text/plain"}, 415, "Content-Type"),
    (
        "multipart",
        "POST",
        "/v2/models/m/infer",
        GOOD,
        {"Content-Type": "multipart/form-data; boundary=x"},
        415,
        "Content-Type",
    ),
    ("brotli", "POST", "/v2/models/m/infer", GOOD, {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ("bad gzip", "POST", "/v2/models/m/infer", b"not gzip", {"Content-Encoding": "gzip"}, 400, "compressed"),
    (
        "truncated gzip",
        "POST",
        "/v2/models/m/infer",
        gzip.compress(GOOD)[:-10],
        {"Content-Encoding": "gzip"},
        400,
        "truncated",
    ),
    (
        "IHCL past the body",
        "POST",
        "/v2/models/m/infer",
        GOOD,
        {"Inference-Header-Content-Length": "99999"},
        400,
        "exceeds the body",
    ),
    (
        "IHCL negative",
        "POST",
        "/v2/models/m/infer",
        GOOD,
        {"Inference-Header-Content-Length": "-1"},
        400,
        "non-negative decimal",
    ),
    (
        "IHCL hex",
        "POST",
        "/v2/models/m/infer",
        GOOD,
        {"Inference-Header-Content-Length": "0x10"},
        400,
        "non-negative decimal",
    ),
    (
        "IHCL cuts JSON",
        "POST",
        "/v2/models/m/infer",
        GOOD,
        {"Inference-Header-Content-Length": "20"},
        400,
        "malformed JSON",
    ),
    (
        "binary size mismatch",
        "POST",
        "/v2/models/m/infer",
        infer_doc(data=None, parameters={"binary_data_size": 15}).replace(b'"data":null,', b"") + b"\x00" * 15,
        {
            "Inference-Header-Content-Length": str(
                len(infer_doc(data=None, parameters={"binary_data_size": 15}).replace(b'"data":null,', b""))
            )
        },
        400,
        "needs 16",
    ),
    ("unknown model", "POST", "/v2/models/nope/infer", GOOD, {}, 404, "Request for unknown model: 'nope' is not found"),
    (
        "unknown version",
        "POST",
        "/v2/models/m/versions/3/infer",
        GOOD,
        {},
        404,
        "Request for unknown model: 'm' version 3 is not found",
    ),
    ("version zero", "POST", "/v2/models/m/versions/0/infer", GOOD, {}, 400, "invalid model version"),
    ("version negative", "POST", "/v2/models/m/versions/-1/infer", GOOD, {}, 400, "invalid model version"),
    ("version float", "POST", "/v2/models/m/versions/1.5/infer", GOOD, {}, 400, "invalid model version"),
    ("version exponent", "POST", "/v2/models/m/versions/1e3/infer", GOOD, {}, 400, "invalid model version"),
    (
        "version huge",
        "POST",
        "/v2/models/m/versions/9999999999999999999999/infer",
        GOOD,
        {},
        400,
        "invalid model version",
    ),
    ("version dots", "POST", "/v2/models/m/versions/../infer", GOOD, {}, 400, "invalid model version"),
    ("version encoded dots", "POST", "/v2/models/m/versions/%2e%2e/infer", GOOD, {}, 400, "invalid model version"),
    (
        "version double encoded",
        "POST",
        "/v2/models/m/versions/%252e%252e/infer",
        GOOD,
        {},
        400,
        "invalid model version",
    ),
    ("version semicolon", "POST", "/v2/models/m/versions/1;../infer", GOOD, {}, 400, "invalid model version"),
    ("version backslash", "POST", "/v2/models/m/versions/..%5c/infer", GOOD, {}, 400, "invalid model version"),
    ("traversal", "POST", "/v2/models/m/versions/../../etc/infer", GOOD, {}, 404, "not found"),
    ("encoded slash in name", "POST", "/v2/models/a%2Fb/infer", GOOD, {}, 404, "not found"),
    ("dot-dot name", "POST", "/v2/models/../infer", GOOD, {}, 400, "invalid model name"),
    ("backslash name", "POST", "/v2/models/..%5c..%5cetc/infer", GOOD, {}, 400, "invalid model name"),
    ("NUL name", "POST", "/v2/models/m%00/infer", GOOD, {}, 400, "invalid model name"),
    ("space name", "POST", "/v2/models/m%20x/infer", GOOD, {}, 400, "invalid model name"),
    ("cyrillic lookalike", "POST", "/v2/models/%D0%BC/infer", GOOD, {}, 400, "invalid model name"),
    ("long name", "POST", "/v2/models/" + "a" * 300 + "/infer", GOOD, {}, 400, "invalid model name"),
    ("metadata bad name", "GET", "/v2/models/.hidden", b"", {}, 400, "invalid model name"),
    ("metadata bad version", "GET", "/v2/models/m/versions/01", b"", {}, 400, "invalid model version"),
    ("metadata unknown", "GET", "/v2/models/nope", b"", {}, 404, "Request for unknown model: 'nope' is not found"),
    ("ready unknown version", "GET", "/v2/models/m/versions/7/ready", b"", {}, 404, "version 7"),
    ("GET on infer", "GET", "/v2/models/m/infer", b"", {}, 405, "method not allowed"),
    ("unknown path", "GET", "/v3/nothing", b"", {}, 404, "not found"),
    (
        "BYTES not UTF-8 for ONNX",
        "POST",
        "/v2/models/s/infer",
        orjson.dumps(
            {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 5}}]}
        )
        + b"\x01\x00\x00\x00\xff",
        {
            "Inference-Header-Content-Length": str(
                len(
                    orjson.dumps(
                        {
                            "inputs": [
                                {
                                    "name": "INPUT0",
                                    "datatype": "BYTES",
                                    "shape": [1],
                                    "parameters": {"binary_data_size": 5},
                                }
                            ]
                        }
                    )
                )
            )
        },
        400,
        "UTF-8",
    ),
    ("request id too long", "POST", "/v2/models/m/infer", GOOD, {"x-request-id": "r" * 2000}, 400, "x-request-id"),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "headers", "status", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_clear_4xx(
    server: RunningServer,
    registry: RecordingRegistry,
    case: str,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    reply = request(server.port, method, path, body, headers)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]  # type: ignore[index]
    assert message in error
    assert "Traceback" not in error and "/tmp" not in error and ".py" not in error
    assert_healthy(server)
    assert registry.calls == []  # requests never touch the registry (or the filesystem)


def test_body_over_the_limit_is_413_before_it_is_sent(server: RunningServer) -> None:
    head = (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {10**10}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)  # and not one byte of the body
        reply = read_reply(sock)
    assert reply.status == 413 and "limit" in reply.json()["error"]  # type: ignore[index]
    assert_healthy(server)


def test_limit_boundary(server: RunningServer) -> None:
    padding = LIMIT - len(GOOD) - 128
    under = GOOD[:-1] + b',"pad":"' + b"x" * (padding - 9) + b'"}'
    assert len(under) < LIMIT
    assert request(server.port, "POST", "/v2/models/m/infer", under).status == 200
    over = GOOD[:-1] + b',"pad":"' + b"x" * (LIMIT - len(GOOD) + 128) + b'"}'
    assert request(server.port, "POST", "/v2/models/m/infer", over).status == 413


def test_chunked_body_over_the_limit_is_413(server: RunningServer) -> None:
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for _ in range(LIMIT // len(chunk) + 4):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the server may close once it has answered
        reply = read_reply(sock)
    assert reply.status == 413
    assert_healthy(server)


def test_many_tiny_chunks(server: RunningServer) -> None:
    body = b"".join(b"1\r\n" + bytes([c]) + b"\r\n" for c in GOOD) + b"0\r\n\r\n"
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        reply = read_reply(sock)
    assert reply.status == 200


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_gzip_bomb_is_413_with_bounded_memory(server: RunningServer) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\x00" * (1 << 20)
    bomb = b"".join(compressor.compress(block) for _ in range(1024)) + compressor.flush()  # 1 GiB inflated
    assert len(bomb) < 2 * 1024 * 1024
    before = rss_kib()
    reply = request(server.port, "POST", "/v2/models/m/infer", bomb, {"Content-Encoding": "gzip"})
    assert reply.status == 413 and "decompressed" in reply.json()["error"]  # type: ignore[index]
    assert rss_kib() - before < 64 * 1024  # the server shares this process: no 1 GiB allocation
    assert_healthy(server)


def test_huge_claimed_shapes_allocate_nothing(server: RunningServer) -> None:
    before = rss_kib()
    for shape in ([2**31, 16], [16, 2**60 + 2], [2**40, 2**40]):
        body = orjson.dumps(
            {"inputs": [{"name": n, "datatype": "INT32", "shape": shape, "data": [1]} for n in ("INPUT0", "INPUT1")]}
        )
        assert request(server.port, "POST", "/v2/models/simple/infer", body).status == 400
        binary = orjson.dumps(
            {
                "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": shape, "parameters": {"binary_data_size": 2**62}}
                ]
            }
        )
        reply = request(
            server.port,
            "POST",
            "/v2/models/simple/infer",
            binary,
            {"Inference-Header-Content-Length": str(len(binary))},
        )
        assert reply.status == 400
    assert rss_kib() - before < 10 * 1024


def test_gzip_body_is_accepted(server: RunningServer) -> None:
    reply = request(server.port, "POST", "/v2/models/m/infer", gzip.compress(GOOD), {"Content-Encoding": "gzip"})
    assert reply.status == 200


def test_pinned_and_headers(server: RunningServer) -> None:
    reply = request(server.port, "POST", "/v2/models/m/versions/1/infer", GOOD, {"x-request-id": "abc-1"})
    assert reply.status == 200
    assert reply.headers["x-model-version"] == "1" and reply.headers["x-request-id"] == "abc-1"
    assert reply.json()["id"] == "abc-1" and reply.json()["model_version"] == "1"  # type: ignore[index]
    routed = request(server.port, "POST", "/v2/models/m/infer", GOOD)
    again = request(server.port, "POST", "/v2/models/m/infer", GOOD)
    assert routed.headers["x-model-version"] == "2"
    # Without an id, one is generated for the logs and returned in the header, not the body.
    assert routed.headers["x-request-id"] != again.headers["x-request-id"]
    assert len(routed.headers["x-request-id"]) >= 8 and "id" not in routed.json()  # type: ignore[operator]


def test_body_id_is_echoed_in_the_header(server: RunningServer) -> None:
    reply = request(server.port, "POST", "/v2/models/m/infer", orjson.dumps(orjson.loads(GOOD) | {"id": "q9"}))
    assert reply.headers["x-request-id"] == "q9"


@pytest.mark.parametrize("rid", ["a\r\nx-evil: 1", "é-id", "tab\there"])
def test_a_body_id_unfit_for_a_header_stays_in_the_body(server: RunningServer, rid: str) -> None:
    reply = request(server.port, "POST", "/v2/models/m/infer", orjson.dumps(orjson.loads(GOOD) | {"id": rid}))
    assert reply.status == 200
    assert reply.json()["id"] == rid  # type: ignore[index]
    assert "x-request-id" not in reply.headers and "x-evil" not in reply.headers


def test_pipelined_requests_stay_in_order(server: RunningServer) -> None:
    def one(body: bytes) -> bytes:
        return (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(one(GOOD) + one(b"{bad") + one(infer_doc(data=[5, 6, 7, 8])))
        stream = sock.makefile("rb")
        replies = [read_reply(stream) for _ in range(3)]
    assert [r.status for r in replies] == [200, 400, 200]
    assert replies[2].json()["outputs"][0]["data"] == [5, 6, 7, 8]  # type: ignore[index]


def test_readiness_is_503_until_models_load(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    with serve(tmp_path, ready=False) as running:
        deadline = time.monotonic() + 10
        while True:
            meta = request(running.port, "GET", "/v2/models/broken")
            if meta.status == 200 and meta.json()["parameters"]["state"] != "LOADING":  # type: ignore[index]
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert meta.json()["parameters"]["state"] == "FAILED"  # type: ignore[index]
        assert "error" not in meta.json()["parameters"]  # type: ignore[index]  # load errors are for /admin
        described = admin(running, "GET", "/admin/models").json()["models"][0]  # type: ignore[index]
        assert "not a readable ONNX model" in described["versions"]["1"]["error"]
        assert request(running.port, "GET", "/v2/health/live").status == 200
        ready = request(running.port, "GET", "/v2/health/ready")
        assert ready.status == 503 and ready.headers["retry-after"] == "1"
        reply = request(running.port, "POST", "/v2/models/broken/infer", GOOD)
        assert reply.status == 503 and "failed to load" in reply.json()["error"]  # type: ignore[index]
        assert "ONNX" not in reply.json()["error"]  # type: ignore[index]
        assert "retry-after" in reply.headers


def test_duplicated_header_length_is_400(server: RunningServer) -> None:
    head = (
        f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(GOOD)}\r\n"
        f"Inference-Header-Content-Length: {len(GOOD)}\r\nInference-Header-Content-Length: {len(GOOD)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head + GOOD)
        reply = read_reply(sock)
    assert reply.status == 400 and "given twice" in reply.json()["error"]  # type: ignore[index]
    assert_healthy(server)


def test_wrong_method_on_infer_names_the_allowed_one(server: RunningServer) -> None:
    reply = request(server.port, "PUT", "/v2/models/m/versions/1/infer", GOOD)
    assert reply.status == 405 and reply.headers["allow"] == "POST"


def test_absolute_form_uri_is_not_a_trust_decision(server: RunningServer) -> None:
    reply = request(server.port, "POST", "http://evil.example/v2/models/m/infer", GOOD)
    assert reply.status in (200, 400, 404)
    if reply.status == 200:  # served as the path it names, never proxied
        assert reply.json()["model_name"] == "m"  # type: ignore[index]
    assert_healthy(server)
