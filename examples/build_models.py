"""Build the bundled example models: a fraud scorer over 16 features, in two versions.

Run from the repository root: ``python examples/build_models.py``. The weights come from
a seeded generator, so the files are reproducible; nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 16
HIDDEN = 32
# ONNX Runtime 1.2x reads IR version 10 with opset 17; newer onnx packages default higher.
IR_VERSION = 10
OPSET = 17


def fraud_scorer(seed: int, hidden: int = HIDDEN) -> onnx.ModelProto:
    """A 16 -> hidden -> 1 MLP with a sigmoid: ``probability`` of fraud per transaction row."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 0.4, (FEATURES, hidden)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, (hidden,)).astype(np.float32)
    w2 = rng.normal(0.0, 0.4, (hidden, 1)).astype(np.float32)
    b2 = np.array([-1.0], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fraud_scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    model.producer_name = "tensorgate-examples"
    onnx.checker.check_model(model)
    return model


def main() -> None:
    """Write ``fraud/1`` and ``fraud/2`` under the models directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path, default=here / "models")
    args = parser.parse_args()
    for version, seed, hidden in ((1, 1, 32), (2, 2, 48)):
        target = args.out / "fraud" / str(version) / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(fraud_scorer(seed, hidden), target)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
