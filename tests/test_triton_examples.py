"""Drop-in for Triton's clients: the calls and checks of NVIDIA's example clients, against ONNX models.

NVIDIA's ``src/python/examples/simple_http_{infer,async_infer,aio_infer,string_infer}_client.py``
(triton-inference-server/client) drive models named ``simple``, ``simple_string`` and
``simple_identity``. These tests make the same calls with the same options (JSON and binary
tensors mixed, query parameters, compression both ways, statistics, outputs left out, a wrong
model name whose message must start with "Request for unknown model") through tritonclient.http,
its async_infer and its asyncio client, against a real server and ONNX models built here.
Also here: what ``GET /v2`` says it serves, and what the repository extension refuses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.onnx_models import add_sub, identity, simple_string, write_model
from tests.rawhttp import request
from tests.server import ADMIN_TOKEN, AUTH, RunningServer, admin, serve

TOKEN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
QUERY = {"test_1": 1, "test_2": 2}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-examples")
    write_model(root, "simple", 1, add_sub(0), config="max_batch_size = 8\n")
    # No warm-up samples: synthetic "" cannot be cast to a number, and the model still serves.
    write_model(root, "simple_string", 1, simple_string(), config="max_batch_size = 8\n")
    write_model(root, "simple_identity", 1, identity("BYTES", ["batch", "width"]), config="max_batch_size = 8\n")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.host, concurrency=2)
    yield triton
    triton.close()


def operands() -> tuple[np.ndarray, np.ndarray]:
    """0..15 and sixteen -1: the operands of the sync and aio examples."""
    return np.arange(16, dtype=np.int32).reshape(1, 16), np.full((1, 16), -1, dtype=np.int32)


def simple_inputs(module: object, a: np.ndarray, b: np.ndarray) -> list[httpclient.InferInput]:
    """INPUT0 as JSON, INPUT1 binary: the examples mix both encodings in one request."""
    first = module.InferInput("INPUT0", [1, 16], "INT32")  # type: ignore[attr-defined]
    first.set_data_from_numpy(a, binary_data=False)
    second = module.InferInput("INPUT1", [1, 16], "INT32")  # type: ignore[attr-defined]
    second.set_data_from_numpy(b, binary_data=True)
    return [first, second]


def mixed_outputs(module: object) -> list[httpclient.InferRequestedOutput]:
    """OUTPUT0 binary, OUTPUT1 JSON."""
    return [
        module.InferRequestedOutput("OUTPUT0", binary_data=True),  # type: ignore[attr-defined]
        module.InferRequestedOutput("OUTPUT1", binary_data=False),  # type: ignore[attr-defined]
    ]


def check_sum_and_difference(result: httpclient.InferResult, a: np.ndarray, b: np.ndarray) -> None:
    assert result.as_numpy("OUTPUT0").tolist() == (a + b).tolist()
    assert result.as_numpy("OUTPUT1").tolist() == (a - b).tolist()


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_simple_http_infer_client_calls(client: httpclient.InferenceServerClient, compression: str | None) -> None:
    a, b = operands()
    result = client.infer(
        "simple",
        simple_inputs(httpclient, a, b),
        outputs=mixed_outputs(httpclient),
        query_params=QUERY,
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    check_sum_and_difference(result, a, b)
    assert len(client.get_inference_statistics(model_name="simple")["model_stats"]) == 1
    # No outputs named: every output comes back.
    result = client.infer(
        "simple",
        simple_inputs(httpclient, a, b),
        outputs=None,
        query_params=QUERY,
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    check_sum_and_difference(result, a, b)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("wrong_model_name", simple_inputs(httpclient, a, b), outputs=mixed_outputs(httpclient))
    assert raised.value.message().startswith("Request for unknown model")
    assert raised.value.status() == "404"


def test_unknown_version_is_worded_as_triton_words_it(client: httpclient.InferenceServerClient) -> None:
    a, b = operands()
    with pytest.raises(InferenceServerException) as raised:
        client.infer("simple", simple_inputs(httpclient, a, b), model_version="9")
    assert raised.value.message() == "Request for unknown model: 'simple' version 9 is not found"
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("wrong_model_name")
    assert raised.value.message() == "Request for unknown model: 'wrong_model_name' is not found"


def test_simple_http_async_infer_client_calls(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("OUTPUT0", "OUTPUT1")]
    pending = [client.async_infer(model_name="simple", inputs=inputs, outputs=outputs) for _ in range(2)]
    for call in pending:
        check_sum_and_difference(call.get_result(timeout=60), a, b)


def test_simple_http_aio_infer_client_calls(server: RunningServer) -> None:
    async def scenario() -> None:
        triton = aioclient.InferenceServerClient(server.host)
        try:
            a, b = operands()
            result = await triton.infer(
                "simple", simple_inputs(aioclient, a, b), outputs=mixed_outputs(aioclient), query_params=QUERY
            )
            check_sum_and_difference(result, a, b)
            stats = await triton.get_inference_statistics(model_name="simple")
            assert len(stats["model_stats"]) == 1
            result = await triton.infer("simple", simple_inputs(aioclient, a, b), outputs=None, query_params=QUERY)
            check_sum_and_difference(result, a, b)
            with pytest.raises(InferenceServerException) as raised:
                await triton.infer("wrong_model_name", simple_inputs(aioclient, a, b))
            assert raised.value.message().startswith("Request for unknown model")
            both = await asyncio.gather(
                triton.infer("simple", simple_inputs(aioclient, a, b), outputs=mixed_outputs(aioclient)),
                triton.infer("simple", simple_inputs(aioclient, a, b), outputs=None),
            )
            for each in both:
                check_sum_and_difference(each, a, b)
        finally:
            await triton.close()

    asyncio.run(scenario())


def test_simple_string_infer_client_calls(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    as_text = np.vectorize(lambda v: str(v).encode(), otypes=[object])
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(as_text(a), binary_data=True)
    inputs[1].set_data_from_numpy(as_text(b), binary_data=False)
    result = client.infer("simple_string", inputs, outputs=mixed_outputs(httpclient))
    assert [int(v) for v in result.as_numpy("OUTPUT0").reshape(-1)] == (a + b).reshape(-1).tolist()
    assert [int(v) for v in result.as_numpy("OUTPUT1").reshape(-1)] == (a - b).reshape(-1).tolist()


def test_a_string_the_model_cannot_parse_is_the_clients_error(client: httpclient.InferenceServerClient) -> None:
    # ONNX Runtime's Cast throws on "abc" (a RUNTIME_EXCEPTION): the request's values are at
    # fault, so it is a 400 that says so, not a 500, and the model goes on serving good requests.
    bad = np.array([b"abc"] * 16, dtype=object).reshape(1, 16)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    for tensor in inputs:
        tensor.set_data_from_numpy(bad, binary_data=True)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("simple_string", inputs)
    assert caught.value.status() == "400"
    message = caught.value.message()
    assert message.startswith("the model failed on this input:") and "Cast" in message
    assert "\x1b" not in message and "onnxruntime" not in message.lower() and ".cc" not in message
    test_simple_string_infer_client_calls(client)


def identity_round_trip(client: httpclient.InferenceServerClient, data: np.ndarray, binary: bool) -> np.ndarray:
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    answer: np.ndarray = client.infer("simple_identity", [tensor], outputs=wanted).as_numpy("OUTPUT0")
    return answer


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_simple_identity_keeps_embedded_nulls(client: httpclient.InferenceServerClient, binary: bool) -> None:
    data = np.array([b"he\x00llo"] * 16, dtype=np.object_).reshape(1, 16)
    echoed = identity_round_trip(client, data, binary)
    if binary:
        assert np.array_equal(echoed, data)
    else:  # JSON strings come back as str: encoded, they are the bytes sent
        assert np.array_equal(np.array([str(v).encode() for v in echoed.reshape(-1)], dtype=object), data.reshape(-1))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_simple_identity_keeps_raw_byte_blobs(client: httpclient.InferenceServerClient, binary: bool) -> None:
    data = np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)
    echoed = identity_round_trip(client, data, binary)
    assert np.array_equal(np.char.encode(echoed.astype(str)), data)


def test_server_metadata_lists_every_extension_served(
    client: httpclient.InferenceServerClient, server: RunningServer
) -> None:
    extensions = client.get_server_metadata()["extensions"]
    assert extensions == [
        "model_repository",
        "schedule_policy",
        "model_configuration",
        "binary_tensor_data",
        "parameters",
        "statistics",
    ]
    # Each one answers, through the client call Triton's users make for it.
    assert {"name": "simple", "version": "1", "state": "READY"} in [
        {k: m.get(k) for k in ("name", "version", "state")} for m in client.get_model_repository_index(headers=TOKEN)
    ]
    assert client.get_model_config("simple")["max_batch_size"] == 8
    assert client.get_inference_statistics("simple")["model_stats"][0]["name"] == "simple"
    a, b = operands()
    result = client.infer(
        "simple", simple_inputs(httpclient, a, b), priority=1, timeout=10_000_000, parameters={"origin": "test"}
    )
    check_sum_and_difference(result, a, b)


def repository_snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def history(server: RunningServer, model: str) -> list[object]:
    reply = admin(server, "GET", f"/admin/models/{model}/history")
    assert reply.status == 200
    entries: list[object] = orjson.loads(reply.body)["history"]
    return entries


def test_load_with_a_config_override_is_refused(
    client: httpclient.InferenceServerClient, server: RunningServer, repository: Path
) -> None:
    before, changes = repository_snapshot(repository), history(server, "simple")
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("simple", headers=TOKEN, config='{"max_batch_size": 2}')
    assert raised.value.status() == "400"
    assert "parameters.config is not supported" in raised.value.message()
    assert repository_snapshot(repository) == before and history(server, "simple") == changes
    assert client.get_model_config("simple")["max_batch_size"] == 8


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"file:1/model.onnx": base64.b64encode(b"not a model").decode()}, "model file uploads"),
        (
            {"config": "{}", "file:2/model.onnx": base64.b64encode(b"x").decode()},
            "parameters.config is not supported",
        ),
        ({"unheard_of": "1"}, "unknown load parameter 'unheard_of'"),
        ("config", "'parameters' must be an object"),
    ],
    ids=["file", "config and file", "unknown", "not an object"],
)
def test_load_with_uploaded_files_is_refused_and_writes_nothing(
    server: RunningServer, repository: Path, parameters: object, message: str
) -> None:
    before, changes = repository_snapshot(repository), history(server, "simple_identity")
    body = orjson.dumps({"parameters": parameters})
    reply = request(server.admin_port, "POST", "/v2/repository/models/simple_identity/load", body, AUTH)
    assert reply.status == 400
    assert message in orjson.loads(reply.body)["error"]
    assert repository_snapshot(repository) == before and history(server, "simple_identity") == changes
    assert not (repository / "simple_identity" / "2").exists()


def test_an_upload_over_the_admin_body_limit_says_uploads_are_not_supported(
    server: RunningServer, repository: Path
) -> None:
    before = repository_snapshot(repository)
    blob = base64.b64encode(bytes(100_000)).decode()
    body = orjson.dumps({"parameters": {"file:1/model.onnx": blob}})
    reply = request(server.admin_port, "POST", "/v2/repository/models/simple/load", body, AUTH)
    assert reply.status == 413
    assert "model file uploads are not supported" in orjson.loads(reply.body)["error"]
    assert repository_snapshot(repository) == before


def test_plain_load_still_works(client: httpclient.InferenceServerClient) -> None:
    client.load_model("simple", headers=TOKEN)
    assert client.is_model_ready("simple")
