"""End to end, raw HTTP: request bodies (compression, content types, byte budgets) and slow readers.

Every test runs a real uvicorn server on a loopback port and talks to it with raw sockets
(tests/rawhttp.py) or real clients (tritonclient, curl).
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest

from gateway import inference
from gateway.config_error import ConfigError
from gateway.protocol import codec
from gateway.settings import load_settings
from tests.onnx_models import identity, write_model
from tests.rawhttp import chunk, open_chunked, read_reply, request
from tests.server import RunningServer, serve

GOOD = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
WAIT_S = 60.0  # generous: CI machines are slow and shared


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll an observable server state (not a sleep standing in for an event we could await)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def padded(size: int) -> bytes:
    """GOOD with an ignored field that makes it ``size`` bytes long."""
    head = GOOD[:-1] + b',"pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def deflate(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def binary_request(array: np.ndarray, binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request for the identity model, and its headers."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "parameters": {"binary_data_output": binary_output},
        }
    )
    return header + array.tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "m", 1, identity("FP32"))
    write_model(root, "wide", 1, identity("FP32", ["batch", "n"]))
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, max_body_bytes=1024 * 1024, max_decompressed_bytes=256 * 1024) as running:
        yield running


def assert_healthy(server: RunningServer) -> None:
    reply = request(server.port, "POST", "/v2/models/m/infer", GOOD, {"Content-Type": "application/json"})
    assert reply.status == 200, reply.body
    assert server.server.lifecycle.body_bytes == 0  # every body's bytes were given back


# -- issue 20 item 2: bytes after the end of the compressed stream -----------------------------


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 16 + zlib.MAX_WBITS), ("deflate", zlib.MAX_WBITS)])
def test_junk_after_the_stream_in_later_chunks_is_400_before_the_body_ends(
    server: RunningServer, encoding: str, wbits: int
) -> None:
    # The stream, then junk, and the chunked body never ends: the answer must come from the
    # first junk chunk (before the fix, the junk was buffered, with quadratic copying, to the end).
    sock = open_chunked(server.port, "/v2/models/m/infer", {"Content-Encoding": encoding})
    with sock:
        sock.sendall(chunk(deflate(GOOD, wbits)))
        sock.sendall(chunk(b"\x00" * 65536))
        reply = read_reply(sock)
    assert reply.status == 400
    assert "after the end of the compressed" in reply.json()["error"]  # type: ignore[index]
    assert_healthy(server)


@pytest.mark.parametrize(
    "body",
    [
        gzip.compress(GOOD) + b"junk",
        gzip.compress(GOOD) + gzip.compress(GOOD),  # a second gzip member is not part of the body
        gzip.compress(GOOD) + b"\x00",
    ],
    ids=["text", "second member", "one byte"],
)
def test_junk_in_the_same_chunk_as_the_end_is_400(server: RunningServer, body: bytes) -> None:
    reply = request(server.port, "POST", "/v2/models/m/infer", body, {"Content-Encoding": "gzip"})
    assert reply.status == 400
    assert "after the end of the compressed" in reply.json()["error"]  # type: ignore[index]
    assert_healthy(server)


def test_a_large_junk_tail_is_refused_at_once(server: RunningServer) -> None:
    # The probe: a gzip body then 16 MiB of junk in chunks. Now a 400 at the first junk
    # chunk; what the client keeps sending is discarded by the parser, not buffered.
    sock = open_chunked(server.port, "/v2/models/m/infer", {"Content-Encoding": "gzip"})
    with sock:
        sock.sendall(chunk(gzip.compress(GOOD)))
        junk = chunk(b"\xff" * 65536)
        try:
            for _ in range(256):
                sock.sendall(junk)
            sock.sendall(chunk(b""))
        except OSError:
            pass  # the server may close once it has answered
        reply = read_reply(sock)
    assert reply.status == 400
    assert_healthy(server)


def test_wire_bytes_count_against_the_body_limit(server: RunningServer) -> None:
    # 1.2 MB of empty deflate blocks inflates to (almost) nothing: the decompressed size alone
    # would let any amount of it through.
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    start = compressor.compress(GOOD) + compressor.flush(zlib.Z_SYNC_FLUSH)  # byte-aligned from here
    padding = b"\x00\x00\x00\xff\xff" * 250_000  # empty stored blocks: 5 bytes each, no data
    body = start + padding + compressor.flush()
    assert len(body) > server.settings.max_body_bytes and len(zlib.decompress(body, 47)) == len(GOOD)
    sock = open_chunked(server.port, "/v2/models/m/infer", {"Content-Encoding": "gzip"})
    with sock:
        try:
            for offset in range(0, len(body), 65536):
                sock.sendall(chunk(body[offset : offset + 65536]))
            sock.sendall(chunk(b""))
        except OSError:
            pass
        reply = read_reply(sock)
    assert reply.status == 413
    assert "byte limit" in reply.json()["error"]  # type: ignore[index]
    assert_healthy(server)


def test_a_valid_compressed_body_still_works(server: RunningServer) -> None:
    for encoding, wbits in (("gzip", 31), ("deflate", 15)):
        reply = request(server.port, "POST", "/v2/models/m/infer", deflate(GOOD, wbits), {"Content-Encoding": encoding})
        assert reply.status == 200, reply.body
        sock = open_chunked(server.port, "/v2/models/m/infer", {"Content-Encoding": encoding})
        with sock:
            compressed = deflate(GOOD, wbits)
            sock.sendall(b"".join(chunk(compressed[i : i + 7]) for i in range(0, len(compressed), 7)) + chunk(b""))
            reply = read_reply(sock)
        assert reply.status == 200, reply.body


# -- issue 20 item 3: decompressed limit, byte budget in flight, decoding off the loop ---------


def test_decompressed_limit_is_lower_than_the_body_limit(server: RunningServer) -> None:
    body = padded(512 * 1024)  # under max_body_bytes (1 MiB), over max_decompressed_bytes (256 KiB)
    assert request(server.port, "POST", "/v2/models/m/infer", body).status == 200
    reply = request(server.port, "POST", "/v2/models/m/infer", gzip.compress(body), {"Content-Encoding": "gzip"})
    assert reply.status == 413
    assert "decompressed request body over the 262144 byte limit" in reply.json()["error"]  # type: ignore[index]
    small = padded(200 * 1024)
    reply = request(server.port, "POST", "/v2/models/m/infer", gzip.compress(small), {"Content-Encoding": "gzip"})
    assert reply.status == 200, reply.body
    assert_healthy(server)


def test_body_bytes_in_flight_have_a_budget(repository: Path) -> None:
    limit = 256 * 1024
    with serve(repository, max_body_bytes=limit, max_inflight_body_bytes=limit) as running:
        life = running.server.lifecycle
        first = padded(200 * 1024)
        held = open_chunked(running.port, "/v2/models/m/infer")
        with held:
            held.sendall(chunk(first[:150_000]))  # the body is not complete: its bytes stay in flight
            wait_until(lambda: life.body_bytes == 150_000, "the first chunk to be counted")
            # Declared and over what is left: refused before its body is read.
            second = padded(120 * 1024)
            reply = request(running.port, "POST", "/v2/models/m/infer", second)
            assert reply.status == 503 and reply.headers["retry-after"] == "1"
            assert "body bytes in flight" in reply.json()["error"]  # type: ignore[index]
            # Chunked (nothing declared): refused when its bytes arrive.
            other = open_chunked(running.port, "/v2/models/m/infer")
            with other:
                other.sendall(chunk(second) + chunk(b""))
                reply = read_reply(other)
            assert reply.status == 503 and reply.headers["retry-after"] == "1"
            assert life.body_bytes == 150_000  # the refused ones gave back what they took
            # Small requests still fit.
            assert request(running.port, "POST", "/v2/models/m/infer", GOOD).status == 200
            metrics = request(running.port, "GET", "/metrics").body.decode()
            assert "\ntensorgate_inflight_body_bytes 150000.0\n" in metrics
            held.sendall(chunk(first[150_000:]) + chunk(b""))
            reply = read_reply(held)
        assert reply.status == 200, reply.body
        wait_until(lambda: life.body_bytes == 0, "the body's bytes to be given back")
        assert request(running.port, "POST", "/v2/models/m/infer", second).status == 200
        assert life.body_bytes == 0


def test_large_bodies_are_decoded_in_a_worker_thread(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # A spy, not a mock: it notes where the real decoder runs and calls it.
    threads: list[tuple[int, bool]] = []
    real = codec.decode_request

    def spy(body: bytes, *args: object, **kwargs: object) -> codec.InferRequest:
        threads.append((len(body), _on_event_loop()))
        return real(body, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "decode_request", spy)
    big = padded(inference.DECODE_INLINE_BYTES + 1)
    assert request(server.port, "POST", "/v2/models/m/infer", GOOD).status == 200
    assert request(server.port, "POST", "/v2/models/m/infer", big).status == 200
    assert threads == [(len(GOOD), True), (len(big), False)]


def test_large_bodies_are_decoded_one_at_a_time(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Three large requests at once: their decodes run in a worker thread one after another,
    # which bounds the memory a JSON body's Python lists take while they are converted.
    lock = threading.Lock()
    running, most = 0, 0
    real = codec.decode_request

    def spy(body: bytes, *args: object, **kwargs: object) -> codec.InferRequest:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.2)  # widens the window in which another decode could overlap this one
            return real(body, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(inference, "decode_request", spy)
    big = padded(inference.DECODE_INLINE_BYTES + 1)
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: request(server.port, "POST", "/v2/models/m/infer", big), range(3)))
    assert [r.status for r in replies] == [200, 200, 200]
    assert most == 1


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- issue 20 item 16: content types a browser can send cross-site ------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        "multipart/form-data; boundary=----x",
        "text/plain",
        "text/plain;charset=UTF-8",
    ],
)
def test_cross_site_simple_content_types_are_415(server: RunningServer, content_type: str) -> None:
    reply = request(server.port, "POST", "/v2/models/m/infer", GOOD, {"Content-Type": content_type})
    assert reply.status == 415
    assert reply.headers["content-type"] == "application/json"
    assert "send application/json" in reply.json()["error"]  # type: ignore[index]
    assert_healthy(server)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "application/json"}, {"Content-Type": "application/json; charset=utf-8"}],
    ids=["none", "json", "json charset"],
)
def test_json_and_no_content_type_are_served(server: RunningServer, headers: dict[str, str]) -> None:
    assert request(server.port, "POST", "/v2/models/m/infer", GOOD, headers).status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 415),
        ({"Sec-Fetch-Site": "same-site"}, 415),
        ({"Origin": "https://evil.example"}, 415),  # a browser without Fetch Metadata
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),  # typed into the address bar, a bookmark: not a page's doing
    ],
    ids=["cross-site", "same-site", "origin only", "same-origin", "user"],
)
def test_an_untyped_body_from_another_sites_page_is_415(
    server: RunningServer, headers: dict[str, str], status: int
) -> None:
    # fetch(url, {method: "POST", mode: "no-cors", body: new Blob([json])}) sends no Content-Type
    # and needs no preflight: the headers a browser adds tell it apart from tritonclient.
    reply = request(server.port, "POST", "/v2/models/m/infer", GOOD, headers)
    assert reply.status == status, reply.body
    if status == 415:
        assert "cross-site" in reply.json()["error"]  # type: ignore[index]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_as_in_the_readme(server: RunningServer) -> None:
    url = f"{server.url}/v2/models/m/infer"
    data = GOOD.decode()
    ok = subprocess.run(
        ["curl", "-s", url, "-H", "Content-Type: application/json", "-d", data],
        capture_output=True,
        timeout=WAIT_S,
        check=True,
    )
    assert orjson.loads(ok.stdout)["outputs"][0]["data"] == [1, 2, 3, 4]
    refused = subprocess.run(  # no -H: curl -d sends application/x-www-form-urlencoded
        ["curl", "-s", "-w", "\n%{http_code}", url, "-d", data], capture_output=True, timeout=WAIT_S, check=True
    )
    body, _, status = refused.stdout.rpartition(b"\n")
    assert status == b"415" and b"application/json" in body


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_sync_and_asyncio(server: RunningServer, binary: bool) -> None:
    # tritonclient.http sends no Content-Type; its asyncio client sends application/octet-stream.
    import tritonclient.http as httpclient
    import tritonclient.http.aio as aioclient

    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    client = httpclient.InferenceServerClient(server.host)
    try:
        tensor = httpclient.InferInput("INPUT0", [2, 4], "FP32")
        tensor.set_data_from_numpy(data, binary_data=binary)
        output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        for compression in (None, "gzip", "deflate"):  # one gzip member, or a zlib stream
            result = client.infer("m", [tensor], outputs=[output], request_compression_algorithm=compression)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    finally:
        client.close()

    async def run_async() -> np.ndarray:
        aclient = aioclient.InferenceServerClient(server.host)
        try:
            tensor = aioclient.InferInput("INPUT0", [2, 4], "FP32")
            tensor.set_data_from_numpy(data, binary_data=binary)
            output = aioclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
            result = await aclient.infer("m", [tensor], outputs=[output])
            return result.as_numpy("OUTPUT0")  # type: ignore[no-any-return]
        finally:
            await aclient.close()

    np.testing.assert_array_equal(asyncio.run(run_async()), data)


# -- issue 20 item 18: a send deadline ----------------------------------------------------------


def _slow_reader(port: int, body: bytes, headers: dict[str, str]) -> socket.socket:
    """A connection that asks for a large response with a tiny receive window, and reads nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", port))
    head = ["POST /v2/models/wide/infer HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    head.extend(f"{k}: {v}" for k, v in headers.items())
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


def _read_all(sock: socket.socket) -> int:
    total = 0
    try:
        while data := sock.recv(1 << 20):
            total += len(data)
    except ConnectionResetError:
        pass
    return total


def _kernel_send_buffer_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024  # Linux's usual default


def test_a_client_that_stops_reading_is_dropped(repository: Path) -> None:
    # Far more than the kernel's socket buffer can hold (4 MiB at most by default), so most of
    # the response waits in the server's own write buffer, where only the deadline frees it.
    size = max(16 * 1024 * 1024, 4 * _kernel_send_buffer_max())
    if size > 48 * 1024 * 1024:
        pytest.skip("the kernel's send buffer is too large for a response under the body limit")
    array = np.ones((1, size // 4), dtype=np.float32)
    body, headers = binary_request(array)
    with serve(repository, send_timeout_s=1.0) as running:
        connections = running.server.server_state.connections
        sock = _slow_reader(running.port, body, headers)
        with sock:
            wait_until(lambda: len(connections) == 1, "the connection to be served")
            assert request(running.port, "GET", "/v2/health/live").status == 200  # others are served meanwhile
            wait_until(lambda: not connections, "the connection to be dropped")
            received = _read_all(sock)
        assert received < array.nbytes  # cut short: the rest was never sent
        assert running.server.lifecycle.inflight == 0
        assert request(running.port, "POST", "/v2/models/m/infer", GOOD).status == 200


def test_a_client_that_reads_late_but_within_the_deadline_gets_everything(repository: Path) -> None:
    array = np.ones((1, 2 * 1024 * 1024), dtype=np.float32)
    body, headers = binary_request(array)
    with serve(repository, send_timeout_s=20.0) as running:
        connections = running.server.server_state.connections
        sock = _slow_reader(running.port, body, headers)
        with sock:
            wait_until(lambda: running.server.lifecycle.inflight == 0, "the response to be written")
            time.sleep(1.5)  # the pause is the point of the test: a client that is late, not gone
            reply = read_reply(sock)
        assert reply.status == 200 and len(reply.body) > array.nbytes
        wait_until(lambda: not connections, "the connection to close")


# -- settings -----------------------------------------------------------------------------------


def test_settings_defaults_and_checks() -> None:
    settings = load_settings(environ={})
    assert settings.max_decompressed_bytes == 16 * 1024 * 1024 < settings.max_body_bytes
    assert settings.max_inflight_body_bytes == 256 * 1024 * 1024 and settings.send_timeout_s == 30.0
    env = {"TENSORGATE_MAX_INFLIGHT_BODY_BYTES": "4096", "TENSORGATE_SEND_TIMEOUT_S": "2.5"}
    settings = load_settings(environ=env, overrides={"max_body_bytes": 4096, "max_decompressed_bytes": 2048})
    assert (settings.max_inflight_body_bytes, settings.send_timeout_s, settings.max_decompressed_bytes) == (
        4096,
        2.5,
        2048,
    )
    for overrides, message in [
        ({"max_inflight_body_bytes": 1024 * 1024}, "max_inflight_body_bytes: must be at least max_body_bytes"),
        ({"max_decompressed_bytes": 100}, "max_decompressed_bytes: must be at least 1024"),
        ({"send_timeout_s": 0}, "send_timeout_s: must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(environ={}, overrides=overrides)
