"""Reduced-precision variants of exported fp32 graphs.

int8 (for CPUs): dynamic quantization. Weights of every MatMul are stored as int8, one scale per
output channel (per-channel keeps the small-magnitude columns of attention and FFN weights
from being rounded to zero); activations are quantised on the fly per call, so no calibration
data is needed. ONNX Runtime runs the resulting MatMulInteger with VNNI/AMX where the CPU has them.

fp16 (for GPUs): every float tensor, inputs, outputs and the cache included, in half precision,
so the cache moves at half the bytes and the GPU's tensor cores do the matmuls. Softmax and
LayerNorm inputs stay in range at this model's scale; the parity gate checks the result.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

PRECISIONS = ("fp32", "int8", "fp16")

log = logging.getLogger("rosetta.export")


def fold_weight_transposes(path: Path) -> int:
    """Give MatMuls that read Transpose(weight) a transposed copy of the weight instead.

    The tied output projection multiplies by the embedding matrix transposed; the quantizer
    only quantises MatMul weights that are initializers, and would leave this, the largest
    matmul of a decoder step, in fp32. The embedding itself stays for the Gather. Returns the
    number of MatMul inputs rewritten.
    """
    model = onnx.load(str(path))
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    transposed = {n.output[0]: n for n in graph.node if n.op_type == "Transpose" and n.input[0] in weights}
    folded = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in transposed:
            continue
        source = transposed[node.input[1]]
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        if source.output[0] not in folded:
            array = numpy_helper.to_array(weights[source.input[0]])
            name = f"{source.input[0]}.transposed"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)), name))
            folded[source.output[0]] = name
        node.input[1] = folded[source.output[0]]
    still_used = {i for n in graph.node for i in n.input}
    for name, node in transposed.items():
        if name in folded and name not in still_used:
            graph.node.remove(node)
    onnx.save(model, str(path))
    return len(folded)


def to_int8(path: Path) -> str:
    """Quantise the graph at `path` in place; returns a description for the manifest."""
    fold_weight_transposes(path)
    tmp = path.with_suffix(".int8.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice through the root logger
    try:
        quantize_dynamic(path, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    tmp.replace(path)
    onnx.checker.check_model(str(path), full_check=True)
    return "int8 dynamic quantization of MatMul weights (per channel, signed), the tied output projection included"


def to_fp16(path: Path) -> str:
    """Convert the graph at `path` to fp16 in place; returns a description for the manifest."""
    model = OnnxModel(convert_float_to_float16(onnx.load(str(path)), keep_io_types=False))
    # The converter appends the Casts it adds for ops it keeps in fp32 (TopK) at the end of the
    # node list; ONNX requires nodes in topological order.
    model.topological_sort()
    model.save_model_to_file(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return "fp16 weights, activations, inputs and outputs"


def convert(paths: list[Path], precision: str) -> list[str]:
    """Bring fp32 graphs to `precision` in place; returns what was applied."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return []
    step = to_int8 if precision == "int8" else to_fp16
    applied = [step(p) for p in paths]
    return sorted(set(applied))
