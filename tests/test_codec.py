"""The V2 codec: pure functions, every datatype, both encodings, and the refusals."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.errors import BadRequest
from gateway.protocol.codec import decode_request, encode_response, parse_header_length
from runtimes.base import TensorSpec
from runtimes.datatypes import NUMPY_DTYPES

SPEC = {"x": TensorSpec("x", "FP32", (-1, 4))}
OUTS = {"y": TensorSpec("y", "FP32", (-1, 4)), "z": TensorSpec("z", "INT64", (-1,))}

SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 65534, 65535],
    "UINT32": [0, 1, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2**64 - 2, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-(2**15), -1, 0, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP16": [0.5, -1.25, 65504.0, 0.0],
    "FP32": [0.5, -1.25, 3.0e38, 1],
    "FP64": [0.1, -1e300, 1e-300, 2],
    "BYTES": ["a", "", "naïve", "x\u0000y"],
}


def decode(doc: Any, spec: dict[str, TensorSpec] | None = None, **kwargs: Any) -> Any:
    # json, not orjson: a client may send integers past 64 bits, which orjson cannot write.
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return decode_request(body, None, spec or SPEC, OUTS, model_name="m", **kwargs)


def one(datatype: str, data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape or [1, 4], "data": data}]}


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_json_every_datatype(datatype: str) -> None:
    spec = {"x": TensorSpec("x", datatype, (-1, 4))}
    request = decode(one(datatype, SAMPLES[datatype]), spec)
    array = request.inputs["x"]
    assert array.shape == (1, 4)
    if datatype == "BYTES":
        assert array.reshape(-1).tolist() == [s.encode() for s in SAMPLES[datatype]]
    else:
        assert array.dtype == NUMPY_DTYPES[datatype]
        assert array.reshape(-1).tolist() == pytest.approx(SAMPLES[datatype])


def binary_body(datatype: str, array: np.ndarray, shape: list[int]) -> tuple[bytes, str]:
    if datatype == "BYTES":
        raw = b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    else:
        raw = array.tobytes()
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}]}
    )
    return header + raw, str(len(header))


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_binary_every_datatype(datatype: str) -> None:
    if datatype == "BYTES":
        array = np.array([s.encode() for s in SAMPLES[datatype]] + [b"\xff\x00"] * 4, dtype=object).reshape(2, 4)
    else:
        array = np.array(SAMPLES[datatype] * 2, dtype=NUMPY_DTYPES[datatype]).reshape(2, 4)
    body, length = binary_body(datatype, array, [2, 4])
    spec = {"x": TensorSpec("x", datatype, (-1, 4))}
    request = decode_request(body, length, spec, OUTS, model_name="m")
    assert request.inputs["x"].shape == (2, 4)
    assert request.inputs["x"].tolist() == array.tolist()


def test_binary_nan_and_infinity_pass_untouched() -> None:
    array = np.array([[np.nan, np.inf, -np.inf, 1.0]], dtype=np.float32)
    body, length = binary_body("FP32", array, [1, 4])
    got = decode_request(body, length, SPEC, OUTS, model_name="m").inputs["x"]
    assert np.isnan(got[0, 0]) and got[0, 1] == np.inf and got[0, 2] == -np.inf


def test_nested_data_and_request_options() -> None:
    doc = one("FP32", [[1, 2, 3, 4], [5, 6, 7, 8]], [2, 4])
    doc.update(
        id="req-7",
        parameters={"binary_data_output": True, "priority": 1},
        outputs=[{"name": "z"}, {"name": "y", "parameters": {"binary_data": False}}],
    )
    request = decode(doc)
    assert request.inputs["x"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert request.id == "req-7"
    assert request.outputs == [("z", True), ("y", False)]
    assert request.elements == 8


def test_all_outputs_by_default() -> None:
    assert decode(one("FP32", [1, 2, 3, 4])).outputs == [("y", False), ("z", False)]


BAD: list[tuple[str, Any, str]] = [
    ("empty body", b"", "malformed JSON"),
    ("truncated", b'{"inputs": [', "malformed JSON"),
    ("trailing comma", b'{"inputs": [],}', "malformed JSON"),
    ("single quotes", b"{'inputs': []}", "malformed JSON"),
    (
        "NaN literal",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [NaN, 1, 2, 3]}]}',
        "malformed JSON",
    ),
    (
        "Infinity literal",
        b'{"inputs": [{"name":"x","datatype":"FP32","shape":[1,4],"data":[Infinity,1,2,3]}]}',
        "malformed JSON",
    ),
    ("array", [], "JSON object"),
    ("string", "x", "JSON object"),
    ("null", None, "JSON object"),
    ("huge number", b"1e999", "malformed JSON"),
    ("no inputs", {}, "'inputs'"),
    ("inputs not a list", {"inputs": {"x": 1}}, "'inputs'"),
    ("empty inputs", {"inputs": []}, "missing inputs: x"),
    ("input not an object", {"inputs": [1]}, "string 'name'"),
    (
        "unknown input",
        one("FP32", [1, 2, 3, 4])
        | {"inputs": [{"name": "q", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        "unknown input 'q'",
    ),
    ("duplicate input", {"inputs": one("FP32", [1, 2, 3, 4])["inputs"] * 2}, "given twice"),
    ("unknown datatype", one("FLOAT", [1, 2, 3, 4]), "unknown datatype 'FLOAT'"),
    (
        "no datatype",
        {"inputs": [{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        "input 'x' has no datatype",
    ),
    ("null datatype", one(None, [1, 2, 3, 4]), "input 'x' has no datatype"),  # type: ignore[arg-type]
    ("datatype not a string", one(["FP32"], [1, 2, 3, 4]), "'datatype' must be a string"),  # type: ignore[arg-type]
    ("datatype a number", one(7, [1, 2, 3, 4]), "got a number"),  # type: ignore[arg-type]
    ("no shape", {"inputs": [{"name": "x", "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "input 'x' has no shape"),
    ("null dim", one("FP32", [1, 2, 3, 4], [1, None]), "got [1, null]"),  # type: ignore[list-item]
    ("null dim, wrong rank", one("FP32", [1, 2, 3, 4], [None]), "shape [null] does not match"),  # type: ignore[list-item]
    ("datatype with space", one("FP32 ", [1, 2, 3, 4]), "unknown datatype"),
    ("wrong datatype", one("INT64", [1, 2, 3, 4]), "does not match the model's FP32"),
    ("string numbers", one("FP32", ["1.0", "2", "3", "4"]), "must be numbers"),
    ("bools in FP32", one("FP32", [True, False, True, False]), "must be numbers"),
    ("nulls", one("FP32", [None, 1, 2, 3]), "must be numbers"),
    ("objects", one("FP32", [{"a": 1}, 1, 2, 3]), "must be numbers"),
    ("fp32 overflow", one("FP32", [1e39, 1, 2, 3]), "out of range"),
    ("too few elements", one("FP32", [1, 2, 3]), "needs 4 elements, got 3"),
    ("too many elements", one("FP32", [1, 2, 3, 4, 5]), "needs 4 elements, got 5"),
    ("ragged", one("FP32", [[1, 2], [3]], [2, 2]), "does not match"),
    ("ragged same count", one("FP32", [[1, 2, 3], [4]]), "ragged"),
    ("too deep", one("FP32", [[[[1, 2, 3, 4]]]]), "nesting depth"),
    ("rank mismatch", one("FP32", [1, 2, 3, 4], [4]), "does not match the model's [-1, 4]"),
    ("fixed dim mismatch", one("FP32", [1, 2, 3, 4, 5, 6], [1, 6]), "does not match"),
    ("negative dim", one("FP32", [1, 2, 3, 4], [-1, 4]), "positive integers"),
    ("zero dim", one("FP32", [], [0, 4]), "positive integers"),
    ("float dim", one("FP32", [1, 2, 3, 4], [1.0, 4]), "positive integers"),
    ("string dim", one("FP32", [1, 2, 3, 4], ["1", 4]), "positive integers"),
    ("bool dim", one("FP32", [1, 2, 3, 4], [True, 4]), "positive integers"),
    ("huge shape", one("FP32", [1, 2, 3, 4], [2**31, 4]), "more than the body holds"),
    ("overflowing shape", one("FP32", [1], [2**62, 4]), "more than the body holds"),
    ("data missing", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}, "'data' is missing"),
    ("data not a list", one("FP32", 5), "must be a list"),
    ("id not a string", one("FP32", [1, 2, 3, 4]) | {"id": 5}, "'id'"),
    ("id too long", one("FP32", [1, 2, 3, 4]) | {"id": "i" * 5000}, "'id'"),
    ("model_name differs", one("FP32", [1, 2, 3, 4]) | {"model_name": "other"}, "differs"),
    ("parameters not object", one("FP32", [1, 2, 3, 4]) | {"parameters": [1]}, "'parameters'"),
    ("nested parameter", one("FP32", [1, 2, 3, 4]) | {"parameters": {"a": {"b": 1}}}, "parameter 'a'"),
    (
        "binary_data_output not bool",
        one("FP32", [1, 2, 3, 4]) | {"parameters": {"binary_data_output": 1}},
        "must be a boolean",
    ),
    ("unknown output", one("FP32", [1, 2, 3, 4]) | {"outputs": [{"name": "nope"}]}, "unknown output"),
    ("duplicate output", one("FP32", [1, 2, 3, 4]) | {"outputs": [{"name": "y"}, {"name": "y"}]}, "twice"),
    ("outputs not list", one("FP32", [1, 2, 3, 4]) | {"outputs": {"name": "y"}}, "'outputs'"),
    (
        "binary size without binary",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]},
        "runs past the end",
    ),
    (
        "huge binary size",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 2**62}}]},
        "runs past the end",
    ),
    (
        "negative binary size",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": -1}}]},
        "non-negative",
    ),
]


@pytest.mark.parametrize(("case", "doc", "message"), BAD, ids=[c[0] for c in BAD])
def test_bad_requests_are_400_with_a_clear_message(case: str, doc: Any, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        decode(doc)
    assert message in raised.value.message
    # Messages speak JSON and the protocol, never Python: no None, True or type reprs.
    for python in ("None", "True", "False", "<class"):
        assert python not in raised.value.message


INTEGER_RANGE = [
    ("UINT8", 256),
    ("UINT8", -1),
    ("INT8", 128),
    ("UINT32", -1),
    ("INT64", 2**63),
    ("UINT64", -1),
    ("UINT64", 2**64),
    ("INT32", 2**31),
    ("INT16", -(2**15) - 1),
]


@pytest.mark.parametrize(("datatype", "value"), INTEGER_RANGE)
def test_integers_out_of_range_never_wrap(datatype: str, value: int) -> None:
    spec = {"x": TensorSpec("x", datatype, (-1, 4))}
    with pytest.raises(BadRequest, match="out of range|must be integers"):
        decode(one(datatype, [value, 0, 0, 0]), spec)


@pytest.mark.parametrize("datatype", ["INT32", "UINT8", "INT64"])
def test_fractions_and_bools_refused_for_integers(datatype: str) -> None:
    spec = {"x": TensorSpec("x", datatype, (-1, 4))}
    for data in ([1.5, 0, 0, 0], [True, False, True, True], ["1", "2", "3", "4"]):
        with pytest.raises(BadRequest, match="must be integers"):
            decode(one(datatype, data), spec)


def test_fp16_overflow_and_bool_strictness() -> None:
    with pytest.raises(BadRequest, match="out of range"):
        decode(one("FP16", [70000.0, 0, 0, 0]), {"x": TensorSpec("x", "FP16", (-1, 4))})
    with pytest.raises(BadRequest, match="true or false"):
        decode(one("BOOL", [1, 0, 1, 0]), {"x": TensorSpec("x", "BOOL", (-1, 4))})


def test_bytes_json_must_be_strings() -> None:
    spec = {"x": TensorSpec("x", "BYTES", (-1, 4))}
    for data in ([1, "a", "b", "c"], [{"b64": "AA=="}, "a", "b", "c"]):
        with pytest.raises(BadRequest, match="must be strings"):
            decode(one("BYTES", data), spec)


def test_deep_nesting_is_refused_without_recursion() -> None:
    deep: Any = [1.0]
    for _ in range(120):
        deep = [deep]
    with pytest.raises(BadRequest, match="nesting depth"):
        decode(one("FP32", deep))
    # Far deeper than the parser allows: a 400, never a RecursionError.
    body = b'{"inputs": ' + b"[" * 150_000 + b"]" * 150_000 + b"}"
    with pytest.raises(BadRequest, match="malformed JSON"):
        decode(body)


BINARY_BAD = [
    ("size mismatch", [2, 2], 15, b"\x00" * 15, "needs 16"),
    ("trailing bytes", [1, 4], 16, b"\x00" * 20, "4 bytes of binary data follow"),
    ("too few bytes", [1, 4], 16, b"\x00" * 10, "runs past the end"),
]


@pytest.mark.parametrize(("case", "shape", "size", "payload", "message"), BINARY_BAD, ids=[c[0] for c in BINARY_BAD])
def test_binary_sizes_must_add_up_exactly(case: str, shape: list[int], size: int, payload: bytes, message: str) -> None:
    spec = {"x": TensorSpec("x", "FP32", (-1, -1))}
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": size}}]}
    )
    with pytest.raises(BadRequest, match=message):
        decode_request(header + payload, str(len(header)), spec, OUTS, model_name="m")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (struct.pack("<I", 10) + b"abcdefg", "runs past the data"),
        (struct.pack("<I", 0xFFFFFFFF) + b"abcd" * 3, "runs past the data"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + struct.pack("<I", 0), "more than 2 elements"),
        (struct.pack("<I", 1) + b"a" + b"\x00\x00", "fewer than 2 elements|cannot hold"),
    ],
)
def test_binary_bytes_prefixes_are_checked(payload: bytes, message: str) -> None:
    spec = {"x": TensorSpec("x", "BYTES", (-1,))}
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(payload)}}]}
    )
    with pytest.raises(BadRequest, match=message):
        decode_request(header + payload, str(len(header)), spec, OUTS, model_name="m")


def test_binary_bytes_zero_length_element_is_valid() -> None:
    spec = {"x": TensorSpec("x", "BYTES", (-1,))}
    payload = struct.pack("<I", 0) + struct.pack("<I", 2) + b"\xff\n"
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(payload)}}]}
    )
    request = decode_request(header + payload, str(len(header)), spec, OUTS, model_name="m")
    assert request.inputs["x"].tolist() == [b"", b"\xff\n"]


def test_binary_bool_bytes_must_be_zero_or_one() -> None:
    spec = {"x": TensorSpec("x", "BOOL", (-1, 4))}
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1, 4], "parameters": {"binary_data_size": 4}}]}
    )
    with pytest.raises(BadRequest, match="0 or 1"):
        decode_request(header + b"\x00\x01\x02\x00", str(len(header)), spec, OUTS, model_name="m")


@pytest.mark.parametrize("value", ["-1", "0x10", "abc", "", "1e3", "99999", "١٢"])
def test_header_length_must_be_a_decimal_within_the_body(value: str) -> None:
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        parse_header_length(value, 100)


def test_header_length_cutting_the_json_is_malformed() -> None:
    body = orjson.dumps(one("FP32", [1, 2, 3, 4]))
    with pytest.raises(BadRequest, match="malformed JSON"):
        decode_request(body, "10", SPEC, OUTS, model_name="m")


def test_encode_json_and_binary_outputs() -> None:
    y = np.arange(8, dtype=np.float32).reshape(2, 4)
    z = np.array([b"ab", b""], dtype=object)
    body, length = encode_response(
        "m", "3", "id-1", [(OUTS["y"], y, False), (TensorSpec("z", "BYTES", (-1,)), z, True)]
    )
    assert length is not None
    doc = orjson.loads(body[:length])
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "id-1"
    assert doc["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 4 + 2 + 4}
    assert body[length:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)


def test_encode_json_only_has_no_header_length() -> None:
    body, length = encode_response("m", "1", None, [(OUTS["y"], np.zeros((1, 4), np.float32), False)])
    assert length is None and "id" not in orjson.loads(body)


def test_non_utf8_bytes_output_needs_binary() -> None:
    with pytest.raises(BadRequest, match="binary_data"):
        encode_response("m", "1", None, [(TensorSpec("z", "BYTES", (-1,)), np.array([b"\xff"], dtype=object), False)])
