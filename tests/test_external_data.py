"""External data is contained wherever a tensor may live, and ONNX Runtime checks it too (pinned)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from packaging.requirements import Requirement
from packaging.version import Version

from runtimes.base import RuntimeLoadError
from runtimes.devices import Devices
from runtimes.external_data import check_external_data
from runtimes.onnxrt import OnnxOptions, OnnxRuntime
from tests.onnx_models import IR_VERSION, OPSET

ROOT = Path(__file__).resolve().parent.parent
FIRST_ORT_CHECKING_ALL = Version("1.27")  # 1.24 checks dense tensors only; 1.27 sparse ones too
IO = (
    [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [4])],
    [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [4])],
)


def external(name: str, location: str, dtype: type = np.float32) -> onnx.TensorProto:
    """A tensor of four elements whose data claims to live in file ``location``."""
    tensor = numpy_helper.from_array(np.zeros(4, dtype), name)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * np.dtype(dtype).itemsize))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def model(graph: onnx.GraphProto, functions: list[onnx.FunctionProto] | None = None) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, functions=functions or [])


def in_a_function(location: str) -> onnx.ModelProto:
    """A local function whose Constant node reads external data."""
    body = [
        helper.make_node("Constant", [], ["k"], value=external("k", location)),
        helper.make_node("Add", ["a", "k"], ["b"]),
    ]
    function = helper.make_function("local", "AddK", ["a"], ["b"], body, [helper.make_opsetid("", OPSET)])
    graph = helper.make_graph([helper.make_node("AddK", ["INPUT0"], ["OUTPUT0"], domain="local")], "f", *IO)
    return model(graph, [function])


def in_a_function_subgraph(location: str) -> onnx.ModelProto:
    """The same, one level deeper: inside an ``If`` branch of a local function."""
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=external("k", location))],
        "branch",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4])],
    )
    body = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True), "c")),
        helper.make_node("If", ["c"], ["k"], then_branch=branch, else_branch=branch),
        helper.make_node("Add", ["a", "k"], ["b"]),
    ]
    function = helper.make_function("local", "AddK", ["a"], ["b"], body, [helper.make_opsetid("", OPSET)])
    graph = helper.make_graph([helper.make_node("AddK", ["INPUT0"], ["OUTPUT0"], domain="local")], "f", *IO)
    return model(graph, [function])


def sparse_initializer(location: str) -> onnx.ModelProto:
    """A sparse initializer whose values live in external data."""
    sparse = helper.make_sparse_tensor(
        external("w", location), numpy_helper.from_array(np.arange(4, dtype=np.int64), "w_indices"), [4]
    )
    graph = helper.make_graph([helper.make_node("Add", ["INPUT0", "w"], ["OUTPUT0"])], "s", *IO)
    graph.sparse_initializer.append(sparse)
    return model(graph)


def sparse_indices(location: str) -> onnx.ModelProto:
    """A sparse initializer whose indices live in external data."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(4, np.float32), "w"), external("w_indices", location, np.int64), [4]
    )
    graph = helper.make_graph([helper.make_node("Add", ["INPUT0", "w"], ["OUTPUT0"])], "s", *IO)
    graph.sparse_initializer.append(sparse)
    return model(graph)


def sparse_attribute(location: str) -> onnx.ModelProto:
    """A Constant node's ``sparse_value`` in external data."""
    sparse = helper.make_sparse_tensor(
        external("k", location), numpy_helper.from_array(np.arange(4, dtype=np.int64), "k_indices"), [4]
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], sparse_value=sparse),
            helper.make_node("Add", ["INPUT0", "k"], ["OUTPUT0"]),
        ],
        "a",
        *IO,
    )
    return model(graph)


BUILDERS: list[Callable[[str], onnx.ModelProto]] = [
    in_a_function,
    in_a_function_subgraph,
    sparse_initializer,
    sparse_indices,
    sparse_attribute,
]


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    """``m/1`` with a secret beside it (in ``m``) and a legitimate weights file inside it."""
    directory = tmp_path / "m" / "1"
    directory.mkdir(parents=True)
    (tmp_path / "m" / "secret.bin").write_bytes(np.arange(4, dtype=np.int64).tobytes())
    (directory / "weights.bin").write_bytes(np.arange(4, dtype=np.int64).tobytes())
    return directory


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", ""])
def test_every_place_a_tensor_lives_is_checked(
    version_dir: Path, build: Callable[[str], onnx.ModelProto], location: str
) -> None:
    with pytest.raises(RuntimeLoadError, match="external data"):
        check_external_data(build(location), version_dir)


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_external_data_inside_the_directory_passes(version_dir: Path, build: Callable[[str], onnx.ModelProto]) -> None:
    check_external_data(build("weights.bin"), version_dir)


def test_the_server_refuses_a_function_reading_outside(version_dir: Path) -> None:
    path = version_dir / "model.onnx"
    path.write_bytes(in_a_function("../secret.bin").SerializeToString())
    with pytest.raises(RuntimeLoadError, match="outside the version directory"):
        OnnxRuntime.load(path, OnnxOptions(), Devices(0, False))


@pytest.mark.parametrize("build", [in_a_function, sparse_initializer], ids=lambda b: b.__name__)
def test_onnx_runtime_itself_refuses_data_outside_the_model_directory(
    version_dir: Path, build: Callable[[str], onnx.ModelProto]
) -> None:
    """Defence in depth: the pinned ONNX Runtime checks paths too (1.26 still read sparse ones)."""
    path = version_dir / "model.onnx"
    path.write_bytes(build("../secret.bin").SerializeToString())
    with pytest.raises(Exception, match="escapes"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_numpy_and_onnx_runtime_are_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    requirements += [Requirement(text) for text in project["optional-dependencies"]["cuda"]]
    by_name: dict[str, list[Requirement]] = {}
    for requirement in requirements:
        by_name.setdefault(requirement.name, []).append(requirement)
    # numpy 1.x wraps out-of-range integers silently; 2 raises.
    assert all(not r.specifier.contains("1.26.4") and r.specifier.contains("2.0.0") for r in by_name["numpy"])
    for name in ("onnxruntime", "onnxruntime-gpu"):
        for requirement in by_name[name]:
            assert not requirement.specifier.contains("1.26.0") and requirement.specifier.contains("1.27.0"), (
                requirement
            )
    installed = next(v for v in (_installed("onnxruntime-gpu"), _installed("onnxruntime")) if v is not None)
    assert installed >= FIRST_ORT_CHECKING_ALL and Version(np.__version__) >= Version("2")


def _installed(name: str) -> Version | None:
    try:
        return Version(version(name))
    except Exception:
        return None
