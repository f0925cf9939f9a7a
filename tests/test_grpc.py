"""End to end: the gRPC front end driven by tritonclient.grpc (sync and aio), unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.config_error import ConfigError
from gateway.models import ModelManager
from gateway.settings import load_settings
from runtimes.datatypes import NUMPY_DTYPES
from tests.gated import Runtimes
from tests.onnx_models import add_sub, identity, write_model
from tests.rawhttp import request
from tests.server import ADMIN_TOKEN, RunningServer, admin, free_port, prediction_log, serve, wait_for

ROOT = Path(__file__).resolve().parent.parent

DATATYPES = sorted(NUMPY_DTYPES)
MAX_BODY = 1024 * 1024
BATCHED = """
max_batch_size = 8
inline_threshold_us = 0
[batching]
max_queue_delay_ms = 20
max_queue_size = 4
priority_levels = 2
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for datatype in DATATYPES:
        write_model(root, f"identity_{datatype.lower()}", 1, identity(datatype))
    write_model(root, "simple", 1, add_sub(0), config='version_policy = "all"\n')
    write_model(root, "simple", 2, add_sub(100))
    write_model(root, "batched", 1, identity("FP32"), config=BATCHED)
    return root


@pytest.fixture(scope="module")
def runtimes() -> Runtimes:
    return Runtimes()


@pytest.fixture(scope="module")
def managers() -> list[ModelManager]:
    return []


@pytest.fixture(scope="module")
def server(repository: Path, runtimes: Runtimes, managers: list[ModelManager]) -> Iterator[RunningServer]:
    with serve(repository, grpc=True, loader=runtimes, on_ready=managers.append, max_body_bytes=MAX_BODY) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.grpc)
    yield triton
    triton.close()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def sample(datatype: str, rows: int = 2) -> np.ndarray:
    rng = np.random.default_rng(len(datatype) * 7919)
    if datatype == "BYTES":
        values = [f"s{i}-é".encode() if i % 3 else b"" for i in range(rows * 4)]
        values[1] = b"nul\x00 inside"  # binary BYTES travel as they are (ONNX strings must be UTF-8)
        return np.array(values, dtype=object).reshape(rows, 4)
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 4)).astype(bool)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, info.max, 0, 1] * rows, dtype=dtype).reshape(rows, 4)
    return rng.normal(0, 100, (rows, 4)).astype(dtype)


def simple_inputs(value: int = 1) -> list[grpcclient.InferInput]:
    tensors = []
    for name, data in (("INPUT0", np.full((1, 16), value, np.int32)), ("INPUT1", np.ones((1, 16), np.int32))):
        tensor = grpcclient.InferInput(name, [1, 16], "INT32")
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    return tensors


def code_of(call: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(call.value.status())


# -- health and metadata ---------------------------------------------------------------------------


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "tensorgate"
    assert "model_repository" in metadata["extensions"] and "statistics" in metadata["extensions"]


def test_model_readiness(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("simple", "9")


def test_model_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("simple", as_json=True)
    assert metadata["name"] == "simple" and metadata["versions"] == ["1", "2"]
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]}
    assert client.get_model_metadata("simple", "1").platform == "onnxruntime_onnx"
    config = client.get_model_config("simple").config
    assert config.name == "simple" and config.backend == "onnxruntime"
    assert next((t.name, t.data_type, list(t.dims)) for t in config.input) == ("INPUT0", 8, [-1, 16])  # TYPE_INT32
    batched = client.get_model_config("batched").config
    assert batched.max_batch_size == 8 and list(batched.input[0].dims) == [4]
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("nope")
    assert code_of(raised) == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'nope' is not found" in raised.value.message()


# -- inference -------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips_raw(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    data = sample(datatype)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    result = client.infer(f"identity_{datatype.lower()}", [tensor])
    out = result.as_numpy("OUTPUT0")
    assert out is not None and out.shape == data.shape
    if datatype == "BYTES":
        assert out.tolist() == data.tolist()
    else:
        assert out.dtype == data.dtype and np.array_equal(out, data)
    response = result.get_response()
    assert response.model_name == f"identity_{datatype.lower()}" and response.model_version == "1"


TYPED = {
    "BOOL": ("bool_contents", [True, False, True, True]),
    "INT8": ("int_contents", [-128, 127, 0, 1]),
    "INT16": ("int_contents", [-32768, 32767, 0, 1]),
    "INT32": ("int_contents", [-(2**31), 2**31 - 1, 0, 1]),
    "INT64": ("int64_contents", [-(2**63), 2**63 - 1, 0, 1]),
    "UINT8": ("uint_contents", [0, 255, 1, 2]),
    "UINT16": ("uint_contents", [0, 65535, 1, 2]),
    "UINT32": ("uint_contents", [0, 2**32 - 1, 1, 2]),
    "UINT64": ("uint64_contents", [0, 2**64 - 1, 1, 2]),
    "FP32": ("fp32_contents", [0.5, -1.25, 3.0, 1e30]),
    "FP64": ("fp64_contents", [0.1, -1e300, 3.0, 2.5]),
    "BYTES": ("bytes_contents", [b"a", b"", b"\x00\x01", "é".encode()]),
}


def typed_request(
    model: str, datatype: str, field: str, values: list[object], shape: tuple[int, ...] = (1, 4)
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="typed-1")
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=list(shape))
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_round_trip(stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str) -> None:
    field, values = TYPED[datatype]
    response, call = stub.ModelInfer.with_call(typed_request(f"identity_{datatype.lower()}", datatype, field, values))
    assert response.id == "typed-1" and response.model_version == "1"
    assert list(response.outputs[0].shape) == [1, 4] and response.outputs[0].datatype == datatype
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        assert raw == b"".join(len(v).to_bytes(4, "little") + v for v in values)  # type: ignore[arg-type,operator]
    else:
        expected = np.array(values, dtype=NUMPY_DTYPES[datatype])
        assert np.array_equal(np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]), expected)
    assert ("x-model-version", "1") in call.trailing_metadata()


def test_routed_pinned_request_id_and_trailing_metadata(
    client: grpcclient.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    routed = client.infer("simple", simple_inputs(5), request_id="rid-7")
    assert routed.as_numpy("OUTPUT0")[0, 0] == 106 and routed.get_response().model_version == "2"  # type: ignore[index]
    assert routed.get_response().id == "rid-7"
    pinned = client.infer("simple", simple_inputs(5), model_version="1")
    assert pinned.as_numpy("OUTPUT0")[0, 0] == 6 and pinned.get_response().model_version == "1"  # type: ignore[index]
    only = client.infer("simple", simple_inputs(5), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in only.get_response().outputs] == ["OUTPUT1"]
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.ones(16, np.int32).tobytes())
    _, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "meta-id-1")])
    trailing = dict(call.trailing_metadata())
    assert trailing["x-model-version"] == "2" and trailing["x-request-id"] == "meta-id-1"


def test_aio_client(server: RunningServer) -> None:
    async def run() -> tuple[bool, np.ndarray | None, str]:
        triton = aioclient.InferenceServerClient(server.grpc)
        try:
            live = await triton.is_server_live()
            result = await triton.infer("simple", simple_inputs(2), model_version="1")
            return live, result.as_numpy("OUTPUT0"), result.get_response().model_version
        finally:
            await triton.close()

    live, out, version = asyncio.run(run())
    assert live and out is not None and out[0, 0] == 3 and version == "1"


def test_stream_infer_answers_every_request_and_errors_do_not_end_the_stream(server: RunningServer) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(6):
            client.async_stream_infer(
                "simple", simple_inputs(i), request_id=f"s{i}", model_version="1" if i % 2 else ""
            )
        client.async_stream_infer("nope", simple_inputs(), request_id="bad")
        got = [answers.get(timeout=30) for _ in range(7)]
        client.stop_stream()
    finally:
        client.close()
    results = {r.get_response().id: r for r, e in got if r is not None}  # type: ignore[attr-defined]
    errors = [e for r, e in got if e is not None]
    assert sorted(results) == [f"s{i}" for i in range(6)]
    for i in range(6):
        response = results[f"s{i}"].get_response()  # type: ignore[attr-defined]
        assert response.model_version == ("1" if i % 2 else "2")
        out = results[f"s{i}"].as_numpy("OUTPUT0")  # type: ignore[attr-defined]
        assert out[0, 0] == i + 1 + (0 if i % 2 else 100)
    assert len(errors) == 1 and "Request for unknown model: 'nope'" in str(errors[0])


def test_aio_stream_infer(server: RunningServer) -> None:
    async def run() -> list[str]:
        triton = aioclient.InferenceServerClient(server.grpc)

        async def requests() -> AsyncIterator[dict[str, object]]:
            for i in range(4):
                yield {"model_name": "batched", "inputs": [fp32_input(float(i))], "request_id": f"a{i}"}

        try:
            seen = []
            async for result, error in triton.stream_infer(requests()):
                assert error is None, error
                seen.append(result.get_response().id)
                if len(seen) == 4:
                    break
            return sorted(seen)
        finally:
            await triton.close()

    assert asyncio.run(run()) == ["a0", "a1", "a2", "a3"]


# -- bad input -------------------------------------------------------------------------------------


def raw_request(model: str, datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def rpc_error(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, timeout=30)
    return raised.value


@pytest.mark.parametrize(
    ("request_", "code", "text"),
    [
        (raw_request("identity_fp32", "FP32", [1, 4], b"\0" * 15), "INVALID_ARGUMENT", "unexpected total byte size 15"),
        (raw_request("identity_fp32", "FP99", [1, 4], b"\0" * 16), "INVALID_ARGUMENT", "unknown datatype"),
        (raw_request("identity_fp32", "FP64", [1, 4], b"\0" * 32), "INVALID_ARGUMENT", "does not match the model's"),
        (raw_request("identity_fp32", "FP32", [2**40, 2**40], b"\0" * 16), "INVALID_ARGUMENT", "byte size"),
        (raw_request("identity_fp32", "FP32", [-1, 4], b"\0" * 16), "INVALID_ARGUMENT", "non-negative"),
        (raw_request("identity_bytes", "BYTES", [1, 4], b"\xff" * 7), "INVALID_ARGUMENT", "BYTES"),
        (
            raw_request("nope", "FP32", [1, 4], b"\0" * 16),
            "NOT_FOUND",
            "Request for unknown model: 'nope' is not found",
        ),
        (
            typed_request("identity_fp32", "FP32", "fp32_contents", [1.0] * 3),
            "INVALID_ARGUMENT",
            "number of elements 3",
        ),
        (typed_request("identity_fp32", "FP32", "int_contents", [1] * 4), "INVALID_ARGUMENT", "contents.fp32_contents"),
        (typed_request("identity_int8", "INT8", "int_contents", [1, 2, 3, 300]), "INVALID_ARGUMENT", "out of range"),
        (typed_request("identity_fp16", "FP16", "fp32_contents", [1.0] * 4), "INVALID_ARGUMENT", "raw_input_contents"),
        (
            typed_request("identity_fp32", "FP32", "fp32_contents", [1.0] * 4, shape=(2**40, 2**40)),
            "INVALID_ARGUMENT",
            "expecting 1208925819614629174706176",
        ),
    ],
)
def test_bad_input_is_an_error_status(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, request_: pb.ModelInferRequest, code: str, text: str
) -> None:
    error = rpc_error(stub, request_)
    assert error.code().name == code, error.details()
    assert text in error.details()
    assert "Traceback" not in error.details()


def test_typed_and_raw_contents_together_is_invalid(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = typed_request("identity_fp32", "FP32", "fp32_contents", [1.0] * 4)
    request.raw_input_contents.append(b"\0" * 16)
    error = rpc_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents field must not be specified when using raw_input_contents" in error.details()


def test_oversized_message_is_resource_exhausted(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    error = rpc_error(stub, raw_request("identity_uint8", "UINT8", [MAX_BODY + 4, 4], b"\0" * (MAX_BODY + 16)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_oversized_metadata_is_refused_and_the_server_goes_on(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("simple", simple_inputs(), headers={"x-big": "a" * (server.settings.max_header_bytes + 1024)})
    assert code_of(raised) in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INTERNAL", "StatusCode.UNAVAILABLE")
    assert client.infer("simple", simple_inputs(), headers={"x-small": "a" * 1024}).as_numpy("OUTPUT0") is not None


def test_bad_parameters_are_invalid(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("batched", [fp32_input(1.0)], priority=9)
    assert code_of(raised) == "StatusCode.INVALID_ARGUMENT" and "priority" in raised.value.message()


def test_a_bad_timeout_is_invalid_even_with_a_deadline(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """The call's deadline replaces a longer timeout parameter, never a malformed one (REST answers 400)."""
    for deadline in (None, 30.0):
        for timeout in ("abc", -5):
            request = raw_request("identity_fp32", "FP32", [1, 4], b"\0" * 16)
            if isinstance(timeout, str):
                request.parameters["timeout"].string_param = timeout
            else:
                request.parameters["timeout"].int64_param = timeout
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(request, timeout=deadline)
            error = cast(Any, raised.value)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (timeout, deadline)
            assert "timeout" in error.details()
        # A valid one, longer than the deadline, is still served (under the deadline).
        request = raw_request("identity_fp32", "FP32", [1, 4], b"\0" * 16)
        request.parameters["timeout"].int64_param = 60_000_000
        assert stub.ModelInfer(request, timeout=deadline).raw_output_contents


def test_bytes_that_are_not_a_request_are_invalid_argument(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        for method in ("ModelInfer", "ModelMetadata", "ServerLive"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as raised:
                call(b"\xff\xff\xff garbage", timeout=10)
            error = cast(Any, raised.value)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert error.details() == f"the request could not be parsed as inference.{method}Request"
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as raised:
            list(stream(iter([b"\xff\xff\xff garbage"]), timeout=10))
        error = cast(Any, raised.value)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        # A call the gateway does not serve is still UNIMPLEMENTED.
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/inference.GRPCInferenceService/CudaSharedMemoryStatus")(b"", timeout=10)
        assert cast(Any, raised.value).code() == grpc.StatusCode.UNIMPLEMENTED
    assert client.infer("simple", simple_inputs(1)).as_numpy("OUTPUT0") is not None


def test_streams_aborted_by_garbage_give_their_rpc_slots_back(repository: Path) -> None:
    """A stream whose message does not parse ends, and its handler with it: more such streams than
    grpc.aio admits at once (2 x max_concurrent_requests + 16 = 20 here) leave the server serving."""
    with serve(repository, grpc=True, loader=Runtimes(), max_concurrent_requests=2) as running:
        with grpc.insecure_channel(running.grpc) as channel:
            stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            for _ in range(25):
                with pytest.raises(grpc.RpcError) as raised:
                    list(stream(iter([b"\xff\xff\xff garbage"]), timeout=10))
                assert cast(Any, raised.value).code() == grpc.StatusCode.INVALID_ARGUMENT
        client = grpcclient.InferenceServerClient(running.grpc)
        try:
            assert client.is_server_live()
            assert client.infer("simple", simple_inputs(1)).as_numpy("OUTPUT0") is not None
        finally:
            client.close()


def test_garbage_on_the_port_leaves_the_server_serving(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    host, port = server.grpc.split(":")
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64 + b"PRI * HTTP/2.0", bytes(range(256)) * 8):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(garbage)
            sock.settimeout(10)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
    assert client.infer("simple", simple_inputs(1)).as_numpy("OUTPUT0") is not None


# -- routing, shadows, the prediction log, statistics, metrics -----------------------------------


def test_canary_weights_and_sticky_metadata(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    route = {"weights": {"1": 50, "2": 50}, "sticky_header": "x-user-id"}
    assert admin(server, "PUT", "/admin/models/simple/route", route).status == 200
    try:
        seen = {client.infer("simple", simple_inputs()).get_response().model_version for _ in range(60)}
        assert seen == {"1", "2"}
        for user in ("alice", "bob", "carol"):
            versions = {
                client.infer("simple", simple_inputs(), headers={"x-user-id": user}).get_response().model_version
                for _ in range(8)
            }
            assert len(versions) == 1, (user, versions)
    finally:
        assert admin(server, "PUT", "/admin/models/simple/route", {"weights": {"2": 100}}).status == 200


def test_shadow_copies_and_the_prediction_log(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    route = {"weights": {"2": 100}, "shadow": {"1": 1.0}}
    assert admin(server, "PUT", "/admin/models/simple/route", route).status == 200
    try:
        result = client.infer("simple", simple_inputs(3), request_id="grpc-logged-1")
        assert result.get_response().model_version == "2"
        deadline = time.monotonic() + 20
        while True:
            records = [r for r in prediction_log(server.settings.log_dir / "simple") if "grpc-logged-1" in str(r)]
            roles = {r.get("role") for r in records}
            if {"primary", "shadow"} <= roles or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert {"primary", "shadow"} <= roles, records
        primary = next(r for r in records if r.get("role") == "primary")
        assert primary["version"] == "2" and primary["status"] == 200
    finally:
        assert admin(server, "PUT", "/admin/models/simple/route", {"weights": {"2": 100}, "shadow": {}}).status == 200


def test_statistics_and_metrics(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    client.infer("identity_int64", [int64_input()])
    stats = client.get_inference_statistics("identity_int64", as_json=True)["model_stats"]
    assert stats[0]["name"] == "identity_int64" and int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    assert len(client.get_inference_statistics().model_stats) >= len(DATATYPES)
    with pytest.raises(InferenceServerException):
        client.infer("nope", [int64_input()])
    text = request(server.port, "GET", "/metrics").body.decode()
    assert 'tensorgate_grpc_requests_total{code="OK",model="identity_int64",role="primary",version="1"}' in text
    assert 'tensorgate_grpc_requests_total{code="NOT_FOUND",model="",role="",version=""}' in text
    assert "tensorgate_grpc_request_duration_seconds_bucket" in text


def int64_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "INT64")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.int64).reshape(1, 4))
    return tensor


def fp32_input(value: float, rows: int = 1) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 4), value, np.float32))
    return tensor


# -- the repository extension, behind the admin token ----------------------------------------------


def test_repository_calls_need_the_admin_token(client: grpcclient.InferenceServerClient) -> None:
    for call in (
        client.get_model_repository_index,
        lambda: client.load_model("simple"),
        lambda: client.unload_model("simple"),
        lambda: client.get_model_repository_index(headers={"authorization": "Bearer wrong-token-0123456789"}),
    ):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert code_of(raised) == "StatusCode.UNAUTHENTICATED"
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
    assert {"name": "simple", "version": "1", "state": "READY"} in index
    client.load_model("simple", headers=auth)
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("simple", headers=auth, config='{"max_batch_size": 4}')
    assert code_of(raised) == "StatusCode.INVALID_ARGUMENT" and "nothing was loaded" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("nope", headers=auth)
    assert code_of(raised) == "StatusCode.NOT_FOUND"


# -- batching: priority, deadlines, cancellation ---------------------------------------------------


def wait_queued(managers: list[ModelManager], count: int, timeout_s: float = 20.0) -> None:
    batcher = managers[0].model("batched").versions[1].batcher
    assert batcher is not None
    deadline = time.monotonic() + timeout_s
    while batcher.queued != count:
        assert time.monotonic() < deadline, f"queue holds {batcher.queued}, not {count}"
        time.sleep(0.005)


def test_priority_timeout_and_deadline(
    server: RunningServer, client: grpcclient.InferenceServerClient, runtimes: Runtimes
) -> None:
    assert client.infer("batched", [fp32_input(1.5)], priority=1, timeout=10_000_000).as_numpy("OUTPUT0")[0, 0] == 1.5  # type: ignore[index]
    runtime = runtimes.by_model["batched"]
    runtime.hold()
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.infer, "batched", [fp32_input(1.0, rows=8)])
            runtime.wait_entered()
            # Behind the held batch: the queue timeout (us) and the gRPC deadline both end it.
            with pytest.raises(InferenceServerException) as raised:
                client.infer("batched", [fp32_input(2.0)], timeout=30_000)
            assert code_of(raised) == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in raised.value.message()
            with pytest.raises(InferenceServerException) as raised:
                client.infer("batched", [fp32_input(3.0)], client_timeout=0.3)
            assert code_of(raised) == "StatusCode.DEADLINE_EXCEEDED"
            runtime.release()
            assert first.result(timeout=30).as_numpy("OUTPUT0").shape == (8, 4)
    finally:
        runtime.release()
    calls = [float(call["INPUT0"].reshape(-1)[0]) for call in runtime.calls]
    assert 2.0 not in calls and 3.0 not in calls


def test_a_cancelled_queued_call_is_never_computed(
    server: RunningServer, runtimes: Runtimes, managers: list[ModelManager]
) -> None:
    runtime = runtimes.by_model["batched"]

    async def run() -> None:
        triton = aioclient.InferenceServerClient(server.grpc)
        try:
            held = asyncio.ensure_future(triton.infer("batched", [fp32_input(1.0, rows=8)]))
            await asyncio.to_thread(runtime.wait_entered)
            queued = asyncio.ensure_future(triton.infer("batched", [fp32_input(77.0)], request_id="cancel-me"))
            await asyncio.to_thread(wait_queued, managers, 1)
            queued.cancel()
            await asyncio.to_thread(wait_queued, managers, 0)
            runtime.release()
            await held
        finally:
            runtime.release()
            await triton.close()

    runtime.hold()
    asyncio.run(run())
    assert all(float(call["INPUT0"].reshape(-1)[0]) != 77.0 for call in runtime.calls)
    deadline = time.monotonic() + 20
    while True:
        records = [r for r in prediction_log(server.settings.log_dir / "batched") if "cancel-me" in str(r)]
        if records or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert records and records[0]["status"] == 499


# -- drain and the concurrency cap (a server of their own) ----------------------------------------


def test_drain_refuses_new_calls_and_finishes_in_flight_ones(repository: Path) -> None:
    runtimes = Runtimes()
    with serve(repository, grpc=True, loader=runtimes, max_concurrent_requests=2) as running:
        runtime = runtimes.by_model["batched"]
        client = grpcclient.InferenceServerClient(running.grpc)
        runtime.hold()
        try:
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(client.infer, "batched", [fp32_input(1.0, rows=8)])
                runtime.wait_entered()
                second = pool.submit(client.infer, "batched", [fp32_input(2.0)])
                deadline = time.monotonic() + 20
                while running.server.lifecycle.inflight < 2:
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
                # Two calls in flight: a third is refused (max_concurrent_requests).
                with pytest.raises(InferenceServerException) as raised:
                    client.infer("simple", simple_inputs())
                assert code_of(raised) == "StatusCode.RESOURCE_EXHAUSTED" and "in flight" in raised.value.message()
                running.server.lifecycle.begin_drain()
                assert not client.is_server_ready()
                runtime.release()
                assert first.result(timeout=30).as_numpy("OUTPUT0").shape == (8, 4)
                assert second.result(timeout=30).as_numpy("OUTPUT0")[0, 0] == 2.0  # type: ignore[index]
            with pytest.raises(InferenceServerException) as raised:
                client.infer("simple", simple_inputs())
            assert code_of(raised) == "StatusCode.UNAVAILABLE" and "shutting down" in raised.value.message()
        finally:
            runtime.release()
            client.close()


# -- settings and tensorgate serve -----------------------------------------------------------------


def test_grpc_port_setting() -> None:
    assert load_settings(environ={}).grpc_port == 8001  # Triton's gRPC port
    assert load_settings(environ={"TENSORGATE_GRPC_PORT": "9001"}).grpc_port == 9001
    assert load_settings(environ={}, overrides={"grpc_port": "0"}).grpc_port == 0
    for bad in ("8000", "70000"):
        with pytest.raises(ConfigError, match="grpc_port"):
            load_settings(environ={}, overrides={"grpc_port": bad})


def test_tensorgate_serve_answers_grpc_and_drains_on_sigterm(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--repository", "examples/models", "--port", str(port),
         "--grpc-port", str(grpc_port), "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "log")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            tensor = grpcclient.InferInput("features", [1, 16], "FP32")
            tensor.set_data_from_numpy(np.full((1, 16), 0.5, np.float32))
            result = client.infer("fraud", [tensor])
            assert result.get_response().model_version == "2"
            # A second server cannot take the port (grpc would share it by default: SO_REUSEPORT).
            busy = subprocess.run(
                [sys.executable, "-m", "gateway", "serve", "--repository", "examples/models", "--port",
                 str(free_port()), "--grpc-port", str(grpc_port), "--state-dir", str(tmp_path / "state2"),
                 "--log-dir", str(tmp_path / "log2")],
                cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert busy.returncode == 3, busy.stderr
            assert "cannot listen for gRPC" in busy.stderr and "Traceback" not in busy.stderr
        finally:
            client.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert f"gRPC listening on 127.0.0.1:{grpc_port}" in output
    assert "Traceback" not in output


# -- gRPC all the way: tensorgate's gRPC in front of Triton's gRPC in front of ONNX Runtime ------


def test_grpc_in_front_of_a_remote_triton_over_grpc(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.onnx_models import sigmoid_scorer
    from tests.triton_server import TritonServer, scorer_weights

    triton = TritonServer(tmp_path_factory.mktemp("triton"))
    triton.start()
    try:
        root = tmp_path_factory.mktemp("remote-models")
        # Version 1 here on ONNX Runtime, version 2 on Triton (over gRPC): the same weights.
        write_model(root, "scorer", 1, sigmoid_scorer(scorer_weights()), config='version_policy = "all"\n')
        (root / "scorer" / "2").mkdir()
        (root / "scorer" / "2" / "config.toml").write_text(
            f'runtime = "triton"\n[triton]\nurl = "{triton.grpc_url}"\nmodel = "scorer"\nversion = "1"\n'
        )
        features = np.random.default_rng(3).random((5, 16), dtype=np.float32)
        with serve(root, grpc=True) as running:
            client = grpcclient.InferenceServerClient(running.grpc)
            try:
                answers = {}
                for version in ("1", "2"):
                    tensor = grpcclient.InferInput("features", [5, 16], "FP32")
                    tensor.set_data_from_numpy(features)
                    result = client.infer("scorer", [tensor], model_version=version)
                    assert result.get_response().model_version == version
                    answers[version] = result.as_numpy("score")
                np.testing.assert_allclose(answers["2"], answers["1"], rtol=1e-5)  # type: ignore[arg-type]
                assert client.get_model_metadata("scorer", "2").platform == "python"  # PyTriton's, via Triton
            finally:
                client.close()
    finally:
        triton.stop()


def test_a_busy_default_grpc_port_is_skipped_with_a_warning(tmp_path: Path) -> None:
    # Port 8001 busy (held here, or by someone else already): a server that did not ask for it
    # serves without gRPC, as servers started with only --port always did.
    holder = socket.socket()
    try:
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", 8001))
            holder.listen()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_GRPC_PORT"}
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--repository", "examples/models", "--port", str(port),
             "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "log")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{port}/v2/health/ready")
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        holder.close()
    assert process.returncode == 0, output
    assert "cannot listen for gRPC on 127.0.0.1:8001" in output and "serving without gRPC" in output


def test_sigterm_lets_an_in_flight_call_finish_and_logs_it(repository: Path) -> None:
    runtimes = Runtimes()
    with serve(repository, grpc=True, loader=runtimes) as running:
        runtime = runtimes.by_model["batched"]
        client = grpcclient.InferenceServerClient(running.grpc)
        runtime.hold()
        try:
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(client.infer, "batched", [fp32_input(4.0, rows=8)], request_id="in-flight")
                runtime.wait_entered()
                running.server.handle_exit(signal.SIGTERM, None)  # the drain, as the signal starts it
                with pytest.raises(InferenceServerException) as raised:
                    client.infer("simple", simple_inputs())
                assert code_of(raised) == "StatusCode.UNAVAILABLE"
                runtime.release()
                assert held.result(timeout=30).as_numpy("OUTPUT0")[0, 0] == 4.0  # type: ignore[index]
        finally:
            runtime.release()
            client.close()
        # The prediction log is closed after the gRPC drain: the in-flight call is in it.
        deadline = time.monotonic() + 30
        while True:
            records = [r for r in prediction_log(running.settings.log_dir / "batched") if "in-flight" in str(r)]
            if records or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [r["status"] for r in records] == [200]
