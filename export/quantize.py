"""Reduced-precision variants of exported fp32 graphs.

int8 (for CPUs): every MatMul by a weight becomes an integer matmul: weights int8, symmetric
within +-63 (`WEIGHT_LEVELS`), one scale per output column; activations quantised on the fly,
one scale per row (its largest magnitude), and multiplied by ONNX Runtime's u8 x s8 kernels
(VNNI where the CPU has it).
Row by row matters: ONNX Runtime's dynamic quantization (DynamicQuantizeLinear + MatMulInteger)
takes one activation scale for the whole batch, so a sentence's translation changed with its
batch mates (17 of 64 test sentences of the default model, alone against batched); a server
that batches requests must not do that. Here a row's numbers depend on that row alone. It
replaced MatMulNBits (8-bit weights in blocks of 128), with which a decoder step was 1.3x
slower at 16 and 64 rows (the vocabulary projection 2.4x; docs/benchmarks.md), at the same
distance from fp32 (docs/export.md). No calibration data is needed.

fp16 (for GPUs): every float tensor, inputs, outputs and the cache included, in half precision,
so the cache moves at half the bytes and the GPU's tensor cores do the matmuls. Softmax and
LayerNorm inputs stay in range at this model's scale; the parity gate checks the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

PRECISIONS = ("fp32", "int8", "fp16")
# int8 graphs quantise a row in one QuantizeLinear node with one scale per block of a row's
# length (blocked quantization, opset 21) instead of Div, Add, Round and Cast: three nodes
# fewer per matmul, which a one-row decoder step, its cost mostly per node, feels.
INT8_OPSET = 21
# Weights span -63..63, not -127..127. On x86 CPUs without VNNI (AVX2, AVX-512 before it: an
# AMD Zen 3, say) ONNX Runtime's u8 x s8 kernel adds two adjacent products u8 * s8 into a
# 16-bit integer that saturates at 32,767: 2 x 255 x 127 = 64,770 overflows it (on a Zen 3,
# rows whose exact product was at most 30 came out up to 15 off: tests/test_export.py). 2 x 255
# x 63 = 32,130 fits, so every CPU computes the exact integer product and a version gives the
# same numbers on all, at half the weights' resolution (docs/export.md measures what it costs).
WEIGHT_LEVELS = 63


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
        perm = _attribute(source, "perm", None)
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
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))  # rows' shapes: zero points shared
    quantize_matmuls(model.graph)
    del model.graph.value_info[:]
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, INT8_OPSET)
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return (f"int8 matmuls: symmetric weights within +-{WEIGHT_LEVELS}, one scale per output column (the tied "
            "output projection included); activations quantised row by row, one scale per row")


def quantize_matmuls(graph: onnx.GraphProto) -> int:
    """Replace every MatMul (or Gemm) by an fp32 initializer weight W (K, N) with its int8 form, in place.

    y = (q(x) - z) @ Wq * (s_row * s_col): W symmetric per output column (Wq int8, s_col =
    max|W_col| / WEIGHT_LEVELS); x quantised to uint8 per row, s_row = max|x_row| / 127 around z = 128, or,
    where x comes from a ReLU and is never negative, s_row = max(x_row) / 255 from z = 0. The
    product is ONNX Runtime's MatMulIntegerToFloat (com.microsoft), written out rather than left
    to its fusion of MatMulInteger, Cast and Mul: that fusion also takes in a following bias Add,
    which its kernel then ignores when the scale is per row (ONNX Runtime 1.31: the linear
    layers' biases were lost; a test holds this). A bias stays a separate Add. Returns the
    number of matmuls replaced; their fp32 weights leave the graph.
    """
    weights = {w.name: w for w in graph.initializer}
    producers = {out: n.op_type for n in graph.node for out in n.output}
    rows = _row_shapes(graph)
    zero_points: dict[object, str] = {}  # a row shape -> its (..., 1) tensor of 128s, made once
    nodes, quantized = [], set()
    for node in graph.node:
        weight = weights.get(node.input[1]) if _is_weight_product(node) else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        if _attribute(node, "transB", 0):
            w = w.T
        column_scales = np.abs(w).max(axis=0) / WEIGHT_LEVELS
        column_scales[column_scales == 0] = 1  # an all-zero column: any scale gives zeros
        prefix = f"{node.output[0]}.int8."
        graph.initializer.extend([numpy_helper.from_array(np.round(w / column_scales).astype(np.int8), prefix + "w"),
                                  numpy_helper.from_array(column_scales.astype(np.float32), prefix + "w_scale")])
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = prefix + "y" if bias else node.output[0]
        nodes += _row_quantized_matmul(node.input[0], product, prefix, w.shape[0],
                                       nonnegative=producers.get(node.input[0]) == "Relu",
                                       zero_points=zero_points, row_shape=rows.get(node.input[0], prefix))
        if bias:
            nodes.append(onnx.helper.make_node("Add", [product, bias], [node.output[0]]))
        quantized.add(weight.name)
    if not quantized:
        return 0
    still_read = {i for n in nodes for i in n.input}
    for name in quantized - still_read:
        graph.initializer.remove(weights[name])
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in _ROW_CONSTANTS.items())
    del graph.node[:]
    graph.node.extend(nodes)
    return sum(1 for n in nodes if n.op_type == "MatMulIntegerToFloat")


def _row_shapes(graph: onnx.GraphProto) -> dict[str, tuple]:
    """The shape without its last axis of each tensor whose shape inference knows every axis
    (a size or a symbol): matmuls on rows of one shape share one tensor of zero points."""
    shapes = {}
    for info in [*graph.input, *graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        leading = tuple(d.dim_param or d.dim_value for d in dims[:-1])
        if dims and all(leading):
            shapes[info.name] = leading
    return shapes


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    """A node's attribute `name`, or `default` where the node does not set it."""
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _is_weight_product(node: onnx.NodeProto) -> bool:
    """A MatMul, or a Gemm that is one (x @ W or x @ W^T, plus a bias): a decoding step's
    linear layers on (B, D) rows are exported as Gemm."""
    if node.op_type == "MatMul":
        return True
    return (node.op_type == "Gemm" and not _attribute(node, "transA", 0) and _attribute(node, "alpha", 1.0) == 1.0
            and _attribute(node, "beta", 1.0) == 1.0)


# Shared by every quantized MatMul of a graph.
_ROW_CONSTANTS = {
    "int8.last_axis": np.array([-1], np.int64),
    "int8.signed_step": np.float32(1 / 127),  # -max..max in 254 steps around 128
    "int8.nonnegative_step": np.float32(1 / 255),  # 0..max in 255 steps from 0
    "int8.signed_zero_point": np.uint8(128),
    "int8.nonnegative_zero_point": np.uint8(0),
}


def _row_quantized_matmul(x: str, y: str, prefix: str, k: int, *, nonnegative: bool, zero_points: dict[object, str],
                          row_shape: object) -> list[onnx.NodeProto]:
    """Nodes computing y = x @ W from the int8 weight `prefix`w (k rows) and its column scales
    `prefix`w_scale, x quantised row by row (quantize_matmuls).

    Each row's scale depends on that row alone, so a sentence's result does not depend on its
    batch mates (one scale per call, as ONNX Runtime's dynamic quantization takes, made it so).
    A row is quantised by one QuantizeLinear with a block as long as the row; its zero point
    (128 where x may be negative) is a tensor of the scales' shape, made by the first matmul on
    rows of `row_shape` and recorded in `zero_points` for the others.

    An all-zero row gets a scale of 0. Its quantised values are then meaningless, but the product
    multiplies them by that 0, so the row's product is exactly 0, as it should be (a test holds
    this). A guard against the 0 cost one node per matmul: 2% of the small model's int8 step at
    one row."""
    n, p = onnx.helper.make_node, prefix
    kind = "nonnegative" if nonnegative else "signed"
    magnitude = [] if nonnegative else [n("Abs", [x], [p + "abs"])]
    row_scale = [n("ReduceMax", [p + "abs" if magnitude else x, "int8.last_axis"], [p + "max"], keepdims=1),
                 n("Mul", [p + "max", f"int8.{kind}_step"], [p + "x_scale"])]
    offsets: list[onnx.NodeProto] = []
    zero_point = None if nonnegative else zero_points.get(row_shape)
    if not nonnegative and zero_point is None:
        zero_point = zero_points[row_shape] = p + "x_zero_point"
        offsets = [n("Shape", [p + "x_scale"], [p + "scale_shape"]),
                   n("ConstantOfShape", [p + "scale_shape"], [zero_point],
                     value=numpy_helper.from_array(np.array([128], np.uint8)))]
    quantize = n("QuantizeLinear", [x, p + "x_scale"] + ([zero_point] if zero_point else []), [p + "x_uint8"],
                 axis=-1, block_size=k)
    product = n("MatMulIntegerToFloat", [p + "x_uint8", p + "w", p + "x_scale", p + "w_scale", f"int8.{kind}_zero_point"],
                [y], domain="com.microsoft")
    return magnitude + row_scale + offsets + [quantize, product]


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
