"""Containment of ONNX external data: a model may only read files inside its own directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx

from runtimes.base import RuntimeLoadError


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model, wherever ONNX lets one live.

    Initializers (dense and sparse) of the main graph and of every subgraph, and tensor
    attributes (dense and sparse, e.g. ``Constant``'s ``value`` and ``sparse_value``) of every
    node: the graphs' nodes and the nodes of the model's local functions (``model.functions``),
    which ONNX Runtime inlines into the graph before it reads their data.
    """
    graphs = [model.graph]
    nodes: list[onnx.NodeProto] = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            nodes.extend(graph.node)
            continue
        for attr in nodes.pop().attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in (*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors):
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def check_external_data(model: onnx.ModelProto, directory: Path) -> None:
    """Refuse a model whose external data points outside ``directory`` (or nowhere)."""
    root = directory.resolve()
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if not location or Path(location).is_absolute() or "\\" in location or "\x00" in location:
            raise RuntimeLoadError(f"tensor {tensor.name!r}: external data location is not a relative path")
        target = (root / location).resolve()
        if not target.is_relative_to(root) or target == root:
            raise RuntimeLoadError(f"tensor {tensor.name!r}: external data lies outside the version directory")
        if not target.is_file():
            raise RuntimeLoadError(f"tensor {tensor.name!r}: external data file is missing")
        for key in ("offset", "length"):
            value = entries.get(key)
            if value is not None and not (value.isascii() and value.isdigit()):
                raise RuntimeLoadError(f"tensor {tensor.name!r}: external data {key} is not a number")
