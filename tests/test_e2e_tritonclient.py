"""End to end: a real uvicorn server, driven by tritonclient.http unchanged."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from runtimes.datatypes import NUMPY_DTYPES
from tests.onnx_models import add_sub, identity, write_model
from tests.server import RunningServer, serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
DATATYPES = sorted(NUMPY_DTYPES)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for datatype in DATATYPES:
        write_model(root, f"identity_{datatype.lower()}", 1, identity(datatype))
    write_model(root, "simple", 1, add_sub(0), config='version_policy = "all"\n')
    write_model(root, "simple", 2, add_sub(100))
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.host)
    yield triton
    triton.close()


def sample(datatype: str, rows: int = 2) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(datatype)) % 2**32)
    if datatype == "BYTES":
        values = [f"s{i}-é".encode() if i % 3 else b"" for i in range(rows * 4)]
        values[1] = b"\xff\x00 raw"  # not UTF-8: fine in binary, refused by ONNX strings
        return np.array(values, dtype=object).reshape(rows, 4)
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 4)).astype(bool)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, info.max, 0, 1] * rows, dtype=dtype).reshape(rows, 4)
    return rng.normal(0, 100, (rows, 4)).astype(dtype)


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "tensorgate" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_config(client: httpclient.InferenceServerClient, repository: Path) -> None:
    meta = client.get_model_metadata("simple")
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    assert meta["parameters"]["version"] == "2"
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"
    digest = hashlib.sha256((repository / "simple" / "1" / "model.onnx").read_bytes()).hexdigest()
    assert client.get_model_metadata("simple", "1")["parameters"]["sha256"] == digest
    config = client.get_model_config("simple")
    assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1, 16]}


def test_model_readiness(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1") and client.is_model_ready("simple", "2")
    assert not client.is_model_ready("simple", "3")
    assert not client.is_model_ready("absent")


@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(
    client: httpclient.InferenceServerClient, datatype: str, binary_in: bool, binary_out: bool
) -> None:
    data = sample(datatype)
    if datatype == "BYTES":
        data[0, 1] = b"plain"  # ONNX strings are UTF-8
        if not binary_out or not binary_in:
            data = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(data)
    tensor = httpclient.InferInput(
        "INPUT0", list(data.shape), np_to_triton_dtype(data.dtype) if datatype != "BYTES" else "BYTES"
    )
    tensor.set_data_from_numpy(data, binary_data=binary_in)
    wanted = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)]
    result = client.infer(f"identity_{datatype.lower()}", [tensor], outputs=wanted)
    got = result.as_numpy("OUTPUT0")
    assert got is not None and got.shape == data.shape
    if datatype == "BYTES":
        expected = [v if isinstance(v, bytes) else v.encode() for v in data.reshape(-1)]
        assert [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)] == expected
    else:
        assert got.dtype == data.dtype and np.array_equal(got, data)
    assert result.get_response()["model_version"] == "1"


def simple_inputs(binary: bool = True) -> list[httpclient.InferInput]:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.int32)
    inputs = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        tensor = httpclient.InferInput(name, [2, 16], "INT32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_routed_goes_to_latest_and_pinned_to_the_named_version(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    routed = client.infer("simple", simple_inputs())
    assert routed.get_response()["model_version"] == "2"
    assert np.array_equal(routed.as_numpy("OUTPUT0"), a + 1 + 100)
    pinned = client.infer("simple", simple_inputs(binary=False), model_version="1")
    assert pinned.get_response()["model_version"] == "1"
    assert np.array_equal(pinned.as_numpy("OUTPUT0"), a + 1)
    assert np.array_equal(pinned.as_numpy("OUTPUT1"), a - 1)


def test_requested_output_subset_and_request_id(client: httpclient.InferenceServerClient) -> None:
    wanted = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = client.infer("simple", simple_inputs(), outputs=wanted, request_id="req-42")
    response: dict[str, Any] = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["OUTPUT1"]
    assert response["id"] == "req-42"
    assert result.as_numpy("OUTPUT0") is None


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client: httpclient.InferenceServerClient, algorithm: str) -> None:
    result = client.infer("simple", simple_inputs(), request_compression_algorithm=algorithm)
    assert result.as_numpy("OUTPUT1").tolist() == (np.arange(32).reshape(2, 16) - 1).tolist()


def test_errors_reach_tritonclient_as_messages(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'absent' is not found"):
        client.infer("absent", simple_inputs())
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'simple' version 9 is not found"):
        client.infer("simple", simple_inputs(), model_version="9")
    with pytest.raises(InferenceServerException, match="missing inputs: INPUT1"):
        client.infer("simple", simple_inputs()[:1])
    bad = httpclient.InferInput("INPUT0", [2, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 16), np.float32))
    with pytest.raises(InferenceServerException, match="datatype FP32 does not match the model's INT32"):
        client.infer("simple", [bad, simple_inputs()[1]])
    assert client.is_server_live()


def test_example_fraud_models_answer_like_onnx_runtime() -> None:
    """The README's first command serves these: both versions, each with its own answers."""
    features = np.random.default_rng(3).normal(0, 1, (5, 16)).astype(np.float32)
    expected = {}
    for version in ("1", "2"):
        session = ort.InferenceSession(
            str(EXAMPLES / "fraud" / version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        (expected[version],) = session.run(None, {"features": features})
    assert not np.allclose(expected["1"], expected["2"])
    with serve(EXAMPLES) as running:
        triton = httpclient.InferenceServerClient(running.host)
        try:
            for version in (None, "1", "2"):
                tensor = httpclient.InferInput("features", [5, 16], "FP32")
                tensor.set_data_from_numpy(features, binary_data=version != "1")
                result = triton.infer("fraud", [tensor], model_version=version or "")
                served = result.get_response()["model_version"]
                assert served == (version or "2")
                np.testing.assert_allclose(result.as_numpy("probability"), expected[served], rtol=1e-6)
        finally:
            triton.close()
