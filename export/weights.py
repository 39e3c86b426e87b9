"""One weights file per version, shared by its graphs, so that each weight is stored once.

The exporter writes every graph with its weights inside: the tied embedding then sits in both
the encoder and the decoder, and an fp16 checkpoint comes out at twice its size in fp32. This
step moves every initializer that holds a model parameter's values (as they are, or the
transposed copy the exporter folds for a MatMul) into one `weights.safetensors` beside the
graphs, which point into it as ONNX external data:

- each parameter is stored once, under its PyTorch name, however many graphs read it;
- in the narrowest float type that holds its values exactly: float16 for a checkpoint stored
  in fp16. An fp32 graph then reads it through a Cast (and a Transpose where it needs the
  transposed copy); ONNX Runtime folds both into a plain fp32 initializer when a session
  loads, so the session computes with the very numbers the graph held before this step.

The file is a checkpoint's weights file (model/checkpoint.py reads it), so training can start
from a published version. Int8 graphs hold quantized copies of their matmul weights instead,
which stay inside the graphs; the parameters they still read as they are (the embedding,
biases, norms) go to the shared file. Constants that are no parameter (the sinusoidal
position table, the decoding rules' masks) stay in the graph that uses them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from safetensors.numpy import save_file

from model.checkpoint import unique_state_dict
from model.transformer import Transformer

WEIGHTS_FILE = "weights.safetensors"
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


def narrowest(array: np.ndarray) -> np.ndarray:
    """`array` as float16 where that holds every value exactly, else as it is."""
    if array.dtype == np.float32:
        half = array.astype(np.float16)
        if np.array_equal(half.astype(np.float32), array):
            return half
    return array


def _key(array: np.ndarray) -> tuple:
    return array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest()


def _parameter_index(model: Transformer) -> tuple[dict[tuple, list[tuple[str, bool]]], dict[str, np.ndarray]]:
    """Every form in which a graph may hold a parameter (fp32 or fp16, as it is or transposed),
    by content, and the parameters by name."""
    parameters = {name: t.float().cpu().numpy() for name, t in unique_state_dict(model).items()
                  if t.is_floating_point()}
    index: dict[tuple, list[tuple[str, bool]]] = {}
    for name, array in parameters.items():
        forms = [(array, False)] + ([(array.T, True)] if array.ndim == 2 else [])
        for form, transposed in forms:
            for dtype in (np.float32, np.float16):
                index.setdefault(_key(form.astype(dtype)), []).append((name, transposed))
    return index, parameters


def _offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Byte offset and length of each tensor in a safetensors file (an 8-byte header size, the
    JSON header, then the data)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return {name: (8 + size + entry["data_offsets"][0], entry["data_offsets"][1] - entry["data_offsets"][0])
            for name, entry in header.items()}


def share_weights(model: Transformer, graph_paths: list[Path]) -> str:
    """Move the parameters the graphs at `graph_paths` hold into one weights file beside them.

    Rewrites the graphs in place and returns the weights file's name. Every graph passes
    onnx.checker's full check again before this returns.
    """
    index, parameters = _parameter_index(model)
    graphs = [onnx.load(str(path)) for path in graph_paths]
    stored: dict[str, np.ndarray] = {}
    uses = []  # per graph: (initializer, parameter name, transposed)
    for graph in graphs:
        found = []
        for initializer in graph.graph.initializer:
            if initializer.data_type not in _FLOATS:
                continue
            value = numpy_helper.to_array(initializer)
            matches = index.get(_key(value))
            if not matches:
                continue
            for name, _ in matches:  # parameters with equal values are each still a parameter
                stored.setdefault(name, narrowest(parameters[name].astype(value.dtype)))
            found.append((initializer, *matches[0]))
        uses.append(found)
    directory = graph_paths[0].parent
    save_file(stored, str(directory / WEIGHTS_FILE))
    # safetensors creates the file readable by its owner only; a server running as another user
    # must read it like the graphs.
    shutil.copymode(graph_paths[0], directory / WEIGHTS_FILE)
    offsets = _offsets(directory / WEIGHTS_FILE)
    for path, graph, found in zip(graph_paths, graphs, uses):
        _point_into(graph.graph, found, stored, offsets)
        path.write_bytes(graph.SerializeToString())
        onnx.checker.check_model(str(path), full_check=True)
    return WEIGHTS_FILE


def _point_into(graph: onnx.GraphProto, found: list, stored: dict[str, np.ndarray],
                offsets: dict[str, tuple[int, int]]) -> None:
    """Replace each found initializer by a reference into the weights file (one per parameter
    and graph), read directly where it has the initializer's type and layout, else through the
    Cast / Transpose nodes that give back the initializer's exact values."""
    external: dict[str, str] = {}  # parameter -> its initializer in this graph
    renamed: dict[str, str] = {}  # initializer read directly -> the reference that replaces it
    nodes = []
    for initializer, name, transposed in found:
        array = stored[name]
        if name not in external:
            external[name] = f"weights/{name}"
            tensor = onnx.TensorProto(name=external[name], dims=array.shape,
                                      data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
            offset, length = offsets[name]
            for key, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", length)):
                tensor.external_data.add(key=key, value=str(value))
            tensor.data_location = onnx.TensorProto.EXTERNAL
            graph.initializer.append(tensor)
        source = external[name]
        cast = array.dtype != helper.tensor_dtype_to_np_dtype(initializer.data_type)
        if not cast and not transposed:
            renamed[initializer.name] = source
        if cast:
            output = f"{initializer.name}/cast" if transposed else initializer.name
            nodes.append(helper.make_node("Cast", [source], [output], to=initializer.data_type))
            source = output
        if transposed:
            nodes.append(helper.make_node("Transpose", [source], [initializer.name], perm=[1, 0]))
        graph.initializer.remove(initializer)
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"{node.op_type} node {node.name!r} has a subgraph; sharing weights into one is not supported")
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    # Before every other node: the graph's nodes stay in topological order.
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
