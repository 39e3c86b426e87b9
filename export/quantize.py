"""Reduced-precision variants of exported fp32 graphs.

int8 (for CPUs): every MatMul becomes ONNX Runtime's MatMulNBits with 8-bit weights, symmetric,
one scale per block of 128 input channels of each output column, and `accuracy_level` 4: the
activations are quantised to int8 on the fly, row by row and block by block, and multiplied
with VNNI/AMX integer kernels where the CPU has them. Row by row matters: ONNX Runtime's
dynamic quantization (DynamicQuantizeLinear + MatMulInteger) takes one activation scale for
the whole batch, so a sentence's translation changed with its batch mates (17 of 64 test
sentences of the default model, alone against batched); a server that batches requests must
not do that. No calibration data is needed either way.

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
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

PRECISIONS = ("fp32", "int8", "fp16")
INT8_BLOCK = 128  # input channels per weight scale (faster than 32: bench on the small workload model)

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
    root = logging.getLogger()
    level = root.level
    # Imported here, and quiet while it works: importing it sets the root logger to INFO
    # (logging.basicConfig), and it and onnx_ir log every node they touch.
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.setLevel(logging.ERROR)
    try:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), bits=8, block_size=INT8_BLOCK, is_symmetric=True,
                                         accuracy_level=4, op_types_to_quantize=("MatMul",))
        quantizer.process()
    finally:
        root.setLevel(level)
    quantizer.model.save_model_to_file(str(path), False)
    onnx.checker.check_model(str(path), full_check=True)
    return (f"int8 MatMulNBits: 8-bit symmetric weights in blocks of {INT8_BLOCK} (the tied output projection "
            "included), activations quantised per row and block (accuracy_level 4)")


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
