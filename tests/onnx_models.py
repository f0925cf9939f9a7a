"""Small ONNX models built in the tests with onnx.helper (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 17

#: V2 datatype -> ONNX element type, for every datatype the protocol carries.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def identity(datatype: str, shape: list[int | str | None] | None = None) -> onnx.ModelProto:
    """INPUT0 -> OUTPUT0 unchanged, of one datatype; shape defaults to [batch, 4]."""
    dims = shape if shape is not None else ["batch", 4]
    elem = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("INPUT0", elem, dims)],
        [helper.make_tensor_value_info("OUTPUT0", elem, dims)],
    )
    return _model(graph)


def add_sub(offset: int = 0) -> onnx.ModelProto:
    """Triton's "simple" model: OUTPUT0 = INPUT0 + INPUT1 + offset, OUTPUT1 = INPUT0 - INPUT1."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["sum"]),
            helper.make_node("Add", ["sum", "offset"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.INT32, ["batch", 16]),
            helper.make_tensor_value_info("INPUT1", TensorProto.INT32, ["batch", 16]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, ["batch", 16]),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.INT32, ["batch", 16]),
        ],
        initializer=[numpy_helper.from_array(np.array([offset], dtype=np.int32), "offset")],
    )
    return _model(graph)


def with_external_weights(directory: Path, location: str) -> onnx.ModelProto:
    """A model whose initializer claims to live in external file ``location``."""
    weights = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "w")
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("raw_data")
    entry = weights.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "w"], ["OUTPUT0"])],
        "external",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def write_model(root: Path, name: str, version: int, model: onnx.ModelProto, config: str | None = None) -> Path:
    """Save ``model`` as ``root/name/version/model.onnx`` (and ``config.toml`` if given)."""
    target = root / name / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(model.SerializeToString())
    if config is not None:
        (root / name / "config.toml").write_text(config)
    return target


def slow_matmul(size: int = 1536, repeats: int = 8) -> onnx.ModelProto:
    """INPUT0 [batch, 4] -> OUTPUT0 = INPUT0, after ``repeats`` products of a size x size matrix.

    Serve it with ``graph_optimization = "disable"`` so the products are not folded at load:
    each call then takes tens to hundreds of milliseconds, long enough to be caught in flight.
    """
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array((rng.random((size, size), dtype=np.float32) / size), "W")
    zero = numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "zero")
    nodes = [helper.make_node("MatMul", ["W", "W"], ["p0"])]
    for i in range(1, repeats):
        nodes.append(helper.make_node("MatMul", [f"p{i - 1}", "W"], [f"p{i}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"p{repeats - 1}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["INPUT0", "nothing"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_matmul",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights, zero],
    )
    return _model(graph)


def sigmoid_scorer(weights: np.ndarray) -> onnx.ModelProto:
    """``features`` [batch, 16] -> ``score`` [batch, 1] = sigmoid(features @ w + b), ``weights`` = w (16) then b.

    tests/triton/pytriton_models.py serves the same function on Triton, from the same weights.
    """
    w = numpy_helper.from_array(weights[:16].astype(np.float32).reshape(16, 1), "w")
    b = numpy_helper.from_array(weights[16:17].astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["product"]),
            helper.make_node("Add", ["product", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "sigmoid_scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b],
    )
    return _model(graph)


def simple_string() -> onnx.ModelProto:
    """Triton's "simple_string": OUTPUT0/OUTPUT1 = sum/difference of INPUT0/INPUT1, all BYTES decimal strings.

    The strings are parsed with ONNX ``Cast`` (so an empty or non-numeric string makes ONNX Runtime
    fail at run time: what synthetic warm-up data does to it) and the results cast back to strings.
    """
    batch16 = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["difference"]),
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
        ],
        "simple_string",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.STRING, batch16),
            helper.make_tensor_value_info("INPUT1", TensorProto.STRING, batch16),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, batch16),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.STRING, batch16),
        ],
    )
    return _model(graph)


def gather_lookup(table_size: int = 10) -> onnx.ModelProto:
    """INPUT0 INT64 [batch, 4] indices -> OUTPUT0 FP32 [batch, 4] = table[INPUT0], table[i] = i / 2.

    Valid by shape whatever the indices, but ONNX Runtime refuses an index outside the table at
    run time: one such request in a batch makes the whole batch's call fail.
    """
    table = numpy_helper.from_array(np.arange(table_size, dtype=np.float32) / 2, "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "INPUT0"], ["OUTPUT0"], axis=0)],
        "gather_lookup",
        [helper.make_tensor_value_info("INPUT0", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        initializer=[table],
    )
    return _model(graph)
