"""Export: the graphs match PyTorch at every shape, versions are self-describing, immutable and atomic."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from safetensors.numpy import load_file

from export import parity
from export.cli import export_version, main as export_main
from export.evaluate import main as evaluate_main
from export.onnx_export import OPSET, export_graphs
from export.quantize import INT8_OPSET, WEIGHT_LEVELS, quantize_matmuls
from model.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint, step_checkpoints, unique_state_dict
from model.search import DecodeOptions
from model.tsv import write_tsv
from server.runtime import (MANIFEST, Gate, ModelVersionError, OnnxGraphs, ParityReport, SessionConfig, file_record,
                            load_manifest, sha256_file, translate_ids, versions)
from tests.builders import random_batch, tiny_pairs

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # exports and verifies models, seconds each (pytest -m "not slow" skips them)


def tree_hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def test_fp32_parity_holds_at_every_shape(tiny_version):
    report = load_manifest(tiny_version).parity
    shapes = [tuple(shape) for shape in report.tensors.shapes]
    # The edges of every dynamic axis are covered, not only the sizes used when exporting.
    assert (1, 1, 0) in shapes and any(b == 64 for b, _, _ in shapes)
    assert any(s == 64 for _, s, _ in shapes) and any(p == 63 for _, _, p in shapes)  # the tiny model's maximum
    # fp32 in both engines: only summation order differs, ~1e-6; 1e-4 is the gate's tolerance.
    assert all(value <= 1e-4 for value in report.tensors.max_abs_diff.values())
    for run in report.translations:
        assert run.identical == run.sentences == 32
        assert run.onnxruntime.bleu == pytest.approx(100.0)
    assert {run.beam_size for run in report.translations} == {1, 4}
    assert report.passed and report.failures == []


def test_manifest_describes_the_version_completely(tiny_version, tiny_checkpoint):
    manifest = load_manifest(tiny_version)
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert (manifest.name, manifest.version, manifest.precision) == ("tiny", 1, "fp32")
    assert (manifest.source_lang, manifest.target_lang) == ("en", "es")
    assert manifest.config == checkpoint.config
    assert manifest.opset == OPSET >= 18
    assert manifest.graphs == {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
    assert set(manifest.files) == {"encoder.onnx", "decoder.onnx", "weights.safetensors", "tokenizer.model",
                                   "probes.json"}
    assert manifest.probes == "probes.json" and manifest.weights == "weights.safetensors"
    for name, record in manifest.files.items():
        assert record == {"sha256": sha256_file(tiny_version / name), "bytes": (tiny_version / name).stat().st_size}
    assert manifest.source_checkpoint["sha256"] == sha256_file(tiny_checkpoint / WEIGHTS)
    assert manifest.source_checkpoint["step"] == checkpoint.info["step"]
    assert {"torch", "onnx", "onnxruntime-gpu", "onnxscript"} <= set(manifest.libraries)
    assert manifest.created.endswith("+00:00")
    assert (tiny_version / "tokenizer.model").read_bytes() == checkpoint.tokenizer.to_bytes()
    assert oct((tiny_version).stat().st_mode)[-3:] == "755"
    # Servers may run as another user: the shared weights are as readable as the graphs.
    assert (tiny_version / "weights.safetensors").stat().st_mode == (tiny_version / "encoder.onnx").stat().st_mode


def test_re_export_creates_the_next_version_and_leaves_older_ones_untouched(tiny_version, tiny_run, repository):
    before = tree_hashes(tiny_version)
    second = step_checkpoints(tiny_run / "checkpoints")[0]  # another checkpoint of the run
    version_dir, report = export_version(second, repository, "tiny", tiny_pairs()[:4], beam_sizes=(1,))
    assert report.passed
    assert version_dir.name == str(max(versions(repository / "tiny")))
    assert load_manifest(version_dir).version == int(version_dir.name) > 1
    assert tree_hashes(tiny_version) == before


@pytest.mark.parametrize("damage, file", [("flip a byte", "decoder.onnx"), ("delete", "decoder.onnx"),
                                          ("add a file", "decoder.onnx"), ("truncate", "decoder.onnx"),
                                          ("flip a byte", "weights.safetensors"), ("delete", "weights.safetensors")])
def test_a_damaged_version_is_refused(tiny_version, tmp_path, damage, file):
    copy = tmp_path / "1"
    shutil.copytree(tiny_version, copy)
    target = copy / file
    if damage == "flip a byte":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    elif damage == "add a file":
        (copy / "stray.onnx").write_bytes(b"x")
    else:
        target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(ModelVersionError, match=f"{file}|stray.onnx"):
        load_manifest(copy)


def test_a_directory_without_manifest_is_not_a_version(tmp_path):
    with pytest.raises(ModelVersionError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_a_failed_gate_publishes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    strict = parity.Tolerance(max_abs_diff=1e-12, identical_tokens=True, max_bleu_drop=0.0)
    monkeypatch.setitem(parity.TOLERANCES, "fp32", strict)
    version_dir, report = export_version(tiny_checkpoint, tmp_path, "tiny", tiny_pairs()[:4], beam_sizes=(1,))
    assert version_dir is None and not report.passed
    assert any("max abs diff" in failure for failure in report.failures)
    assert list((tmp_path / "tiny").iterdir()) == []


def test_an_export_killed_midway_leaves_no_version(tiny_checkpoint, tiny_corpus, tmp_path):
    """SIGKILL while the export works: no version appears, and the next export cleans up and succeeds."""
    model_dir = tmp_path / "tiny"
    command = [sys.executable, "-m", "export.cli", str(tiny_checkpoint), "--repository", str(tmp_path),
               "--name", "tiny", "--test", str(tiny_corpus / "valid.tsv"), "--parity-sentences", "4"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(model_dir.glob(".staging-*/encoder.onnx")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(model_dir.glob(".staging-*")), "the kill should have hit the export mid-way"
    assert versions(model_dir) == []
    assert export_main([str(tiny_checkpoint), "--repository", str(tmp_path), "--name", "tiny",
                        "--test", str(tiny_corpus / "valid.tsv"), "--parity-sentences", "4"]) == 0
    assert versions(model_dir) == [1]
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]  # the dead export's staging is gone


@pytest.fixture(scope="module")
def int8_from_checkpoint(tiny_checkpoint, tmp_path_factory) -> tuple[Path, ParityReport]:
    """The tiny checkpoint exported in int8 through the whole gate (the int8 tests below share it)."""
    return export_version(tiny_checkpoint, tmp_path_factory.mktemp("int8"), "tiny", tiny_pairs(), precision="int8")


@pytest.fixture(scope="module")
def fp16_from_version(tiny_version, tmp_path_factory) -> tuple[Path, ParityReport]:
    """The published fp32 version (what the repository keeps) exported again in fp16."""
    return export_version(tiny_version, tmp_path_factory.mktemp("fp16"), "tiny", tiny_pairs(), precision="fp16")


# A variant is exported from a checkpoint, or from a published fp32 version (what the repository keeps).
@pytest.mark.parametrize("precision, source", [("int8", "checkpoint"), ("fp16", "version")])
def test_reduced_precision_variants_load_and_stay_within_tolerance(tiny_checkpoint, tiny_version, request, precision,
                                                                   source):
    origin = tiny_checkpoint if source == "checkpoint" else tiny_version
    version_dir, report = request.getfixturevalue(f"{precision}_from_{source}")
    assert report.passed, report.failures
    manifest = load_manifest(version_dir)
    assert manifest.precision == precision
    assert manifest.source_checkpoint["sha256"] == sha256_file(load_checkpoint(origin).weights)
    assert any(precision in step for step in manifest.optimizations)
    tolerance = parity.TOLERANCES[precision]
    if tolerance.max_abs_diff is not None:
        assert report.tensors.max_abs_diff["logits"] <= tolerance.max_abs_diff
    for run in report.translations:
        assert run.bleu_change >= -tolerance.max_bleu_drop
    # The embedding, read by both graphs, is stored once, in the shared file.
    assert stored_copies(version_dir, load_checkpoint(tiny_checkpoint))["source_embedding.tokens.weight"] == 1
    if precision == "int8":  # its matmul weights are quantized: nothing to start training from
        with pytest.raises(ValueError, match="int8 version"):
            load_checkpoint(version_dir)
    else:
        assert load_checkpoint(version_dir).config == manifest.config


def weight_bytes(version_dir: Path) -> int:
    total = 0
    for graph in ("encoder.onnx", "decoder.onnx"):
        for initializer in onnx.load(str(version_dir / graph)).graph.initializer:
            total += numpy_helper.to_array(initializer).nbytes
    return total


def test_int8_stores_every_matmul_weight_in_8_bits(tiny_version, int8_from_checkpoint):
    version_dir, _ = int8_from_checkpoint
    for graph in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(version_dir / graph))
        weights = {w.name: w for w in model.graph.initializer}
        assert not [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
        quantized = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
        assert quantized and all(weights[n.input[1]].data_type == onnx.TensorProto.INT8 for n in quantized)
        # A row is quantised in one node; a graph's matmuls all take rows of one shape, so one
        # tensor of zero points serves them all.
        assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == len(quantized)
        assert sum(n.op_type == "ConstantOfShape" for n in model.graph.node) == 1
    assert load_manifest(version_dir).opset == INT8_OPSET
    # Embeddings (read by Gather) stay fp32, so the whole shrinks less than the 4x of the matmul weights alone.
    assert weight_bytes(version_dir) < 0.6 * weight_bytes(tiny_version)


def test_attention_scores_are_unscaled_products_in_the_graphs_onnx_runtime_runs(tiny_version, tmp_path):
    """The queries' scale stays out of the score MatMuls: ONNX Runtime's MatMul kernel with an
    alpha other than 1 took 0.8 ms more of a 10 ms decoder step at 64 rows (model/attention.py).
    The decoder step's key-cache transposes are still folded into its products (FusedMatMul)."""
    fused = {}
    for graph in ("encoder", "decoder"):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{graph}.onnx")
        ort.InferenceSession(str(tiny_version / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(tmp_path / f"{graph}.onnx"), load_external_data=False).graph.node
        fused[graph] = [n for n in nodes if n.op_type == "FusedMatMul"]
        alphas = {onnx.helper.get_attribute_value(a) for n in fused[graph] for a in n.attribute if a.name == "alpha"}
        assert alphas <= {1.0}
    assert fused["decoder"]


def _int8_linear_model(w: np.ndarray, b: np.ndarray, layout: str, rank: int, *,
                       rectified: bool = False) -> onnx.ModelProto:
    """relu?(x) @ W^T + b for x of `rank` dimensions, quantised by quantize_matmuls, exported as a
    Gemm (a step's (B, D) rows) or as MatMul + Add (B, T, D)."""
    f32 = onnx.TensorProto.FLOAT
    first = [onnx.helper.make_node("Relu", ["x"], ["r"])] if rectified else []
    rows = "r" if rectified else "x"
    if layout == "gemm":
        nodes = first + [onnx.helper.make_node("Gemm", [rows, "w", "b"], ["y"], transB=1)]
        weights = [numpy_helper.from_array(w.astype(np.float32), "w")]
    else:
        nodes = first + [onnx.helper.make_node("MatMul", [rows, "w"], ["xw"]),
                         onnx.helper.make_node("Add", ["xw", "b"], ["y"])]
        weights = [numpy_helper.from_array(w.T.astype(np.float32), "w")]
    shape = [None] * (rank - 1)
    graph = onnx.helper.make_graph(nodes, layout, [onnx.helper.make_tensor_value_info("x", f32, shape + [w.shape[1]])],
                                   [onnx.helper.make_tensor_value_info("y", f32, shape + [w.shape[0]])],
                                   weights + [numpy_helper.from_array(b.astype(np.float32), "b")])
    assert quantize_matmuls(graph) == 1
    assert not [n for n in graph.node if n.op_type in ("Gemm", "MatMul")] and "w" not in {i.name for i in graph.initializer}
    return onnx.helper.make_model(graph, ir_version=10, opset_imports=[onnx.helper.make_opsetid("", INT8_OPSET),
                                                                      onnx.helper.make_opsetid("com.microsoft", 1)])


def _int8_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray, layout: str, *, rectified: bool = False) -> np.ndarray:
    """relu?(x) @ W^T + b through `_int8_linear_model`, in a session with every optimization on."""
    model = _int8_linear_model(w, b, layout, x.ndim, rectified=rectified)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32)})[0]


@pytest.mark.parametrize("layout", ["gemm", "matmul+add"])
def test_int8_keeps_a_linear_layers_bias(layout):
    """x @ W^T + b becomes an integer matmul plus the same bias, within int8's rounding of the
    fp32 result (ONNX Runtime's fusion of a bias into a per-row-scaled integer matmul drops the
    bias: export/quantize.py)."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((5, 3, 16)), rng.standard_normal((24, 16)), rng.standard_normal(24) * 4
    x = x[:, 0] if layout == "gemm" else x
    y = _int8_linear(x, w, b, layout)
    # x rounded to within 1/254 of its largest magnitude and W to within 1/126 (WEIGHT_LEVELS
    # 63): errors of about 1.2% of |x| |W| sqrt(K); without the bias (|b| up to ~10) the error
    # would be ten times that.
    assert np.abs(y - (x @ w.T + b)).max() <= 0.012 * np.abs(x).max() * np.abs(w).max() * 16 ** 0.5


@pytest.mark.parametrize("rectified", [False, True])
def test_int8_products_are_exact_on_every_cpu(rectified):
    """Rows at the quantised extremes (every value +-a: 0 or 255 as uint8; a ReLU's 0 or a: 0 or
    255) times weights at theirs (+-b: +-WEIGHT_LEVELS) have no rounding error at all, so the
    result must be x @ W^T + b to fp32 precision. On x86 CPUs without VNNI, whose u8 x s8 kernel
    sums two products in a saturating 16-bit integer, weights of +-127 fail this (Zen 3: up to 15
    off where |y| <= 30); the weight range is what keeps every CPU exact, so it is checked too."""
    rng = np.random.default_rng(1)
    k = 64
    x = np.where(rng.random((6, k)) < 0.5, -3.0, 3.0)
    w = np.where(rng.random((40, k)) < 0.5, -0.5, 0.5)
    b = rng.standard_normal(40)
    relu_x = np.maximum(x, 0) if rectified else x
    y = _int8_linear(x, w, b, "gemm", rectified=rectified)
    assert np.abs(y - (relu_x @ w.T + b)).max() <= 1e-4 * np.abs(relu_x @ w.T).max()
    model = _int8_linear_model(w, b, "gemm", x.ndim, rectified=rectified)
    [weight] = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert np.abs(weight.astype(np.int64)).max() == WEIGHT_LEVELS == 63


@pytest.mark.parametrize("rectified", [False, True])
def test_int8_an_all_zero_row_gives_exactly_the_bias(rectified):
    """A row of zeros has a row scale of 0 (no guard against it): its product is exactly 0, so its
    output is the bias, and the other rows are untouched (a free slot's or a ReLU's zero row)."""
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((4, 16)), rng.standard_normal((24, 16)), rng.standard_normal(24)
    x[[0, 2]] = 0 if not rectified else -np.abs(x[[0, 2]])  # zeros, or all negative before the ReLU
    y = _int8_linear(x, w, b, "gemm", rectified=rectified)
    assert np.array_equal(y[[0, 2]], np.stack([b.astype(np.float32)] * 2)) and np.isfinite(y).all()
    alone = _int8_linear(x[[1, 3]], w, b, "gemm", rectified=rectified)
    assert np.array_equal(y[[1, 3]], alone)


def test_int8_rows_are_quantised_alone(int8_from_checkpoint):
    """Each row's activations get their own scale: a row's int8 logits are bit for bit the same
    alone as among other rows, however large those rows' values are."""
    version_dir, _ = int8_from_checkpoint
    graphs = OnnxGraphs(version_dir, SessionConfig(device="cpu"))
    source_ids = np.asarray(random_batch([9, 6, 7], vocab=graphs.config.vocab_size))
    keys, values = graphs.encode(source_ids)
    loud = [k * 50 for k in keys], [v * 50 for v in values]  # rows 1 and 2 far larger than row 0
    mask = source_ids != graphs.config.pad_id
    tokens = np.full((3, 1), graphs.config.bos_id, dtype=np.int64)
    first = (np.zeros(3, np.int64), np.ones(3, bool))
    together = graphs.step_logits(tokens, *first, [np.concatenate([k[:1], l[1:]]) for k, l in zip(keys, loud[0])],
                                  [np.concatenate([v[:1], l[1:]]) for v, l in zip(values, loud[1])], mask,
                                  *graphs.empty_cache(3))[0]
    quiet = graphs.step_logits(tokens, *first, keys, values, mask, *graphs.empty_cache(3))[0]
    alone = graphs.step_logits(tokens[:1], *(a[:1] for a in first), [k[:1] for k in keys], [v[:1] for v in values],
                               mask[:1], *graphs.empty_cache(1))[0]
    assert not np.allclose(together[1:], quiet[1:], atol=1e-2)  # the loud rows did change
    assert np.array_equal(together[0], alone[0])


@pytest.mark.parametrize("engine", ["checkpoint", "version"])
def test_evaluate_prints_json_and_scores_perfect_copies_at_100(engine, tiny_checkpoint, tiny_version, tiny_corpus,
                                                               capsys):
    model = tiny_checkpoint if engine == "checkpoint" else tiny_version
    assert evaluate_main(["--model", str(model), "--test", str(tiny_corpus / "valid.tsv"), "--beam", "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bleu"] == pytest.approx(100.0) and result["chrf"] == pytest.approx(100.0)
    assert result["sentences"] == 32 and result["seconds"] > 0
    assert result["engine"].startswith("pytorch" if engine == "checkpoint" else "onnxruntime")


def test_evaluate_scores_a_sample_spread_over_the_file(tiny_version, tmp_path, capsys):
    """--sentences N scores N pairs taken evenly from the whole file, not its first N lines."""
    pairs = tiny_pairs()
    write_tsv(tmp_path / "test.tsv", pairs)
    translations = tmp_path / "out.txt"
    assert evaluate_main(["--model", str(tiny_version), "--test", str(tmp_path / "test.tsv"), "--sentences", "4",
                          "--output", str(translations)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sentences"] == 4
    assert translations.read_text().splitlines() == [pairs[i][1] for i in (0, 8, 16, 24)]  # it translates them all
    with pytest.raises(SystemExit):
        evaluate_main(["--model", str(tiny_version), "--test", str(tmp_path / "test.tsv"), "--sentences", "-1"])
    assert "--sentences must be 0 (all pairs) or more" in capsys.readouterr().err


def test_evaluate_names_the_malformed_line(tiny_version, tmp_path, capsys):
    (tmp_path / "bad.tsv").write_text("The red cat.\tEl gato rojo.\nno reference here\n")
    assert evaluate_main(["--model", str(tiny_version), "--test", str(tmp_path / "bad.tsv")]) == 2
    assert "line 2" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [("The red cat.\tEl gato rojo.\nno reference here\n", "line 2"),
                                              ("", "holds no pairs")])
def test_both_commands_refuse_a_test_set_with_a_bad_line_or_no_pairs(content, message, tmp_path, capsys):
    (tmp_path / "test.tsv").write_text(content)
    test = ["--test", str(tmp_path / "test.tsv")]
    assert evaluate_main(["--model", str(tmp_path / "no-model"), *test]) == 2
    assert f"rosetta-evaluate: {tmp_path / 'test.tsv'}" in (err := capsys.readouterr().err) and message in err
    assert export_main([str(tmp_path / "no-checkpoint"), "--repository", str(tmp_path / "models"), *test]) == 2
    assert f"rosetta-export: {tmp_path / 'test.tsv'}" in (err := capsys.readouterr().err) and message in err
    assert not (tmp_path / "models").exists()


def test_probes_replay_token_for_token_and_record_heldout_quality(tiny_version):
    """What a server checks before serving a version: the probes' tokens and the held-out score."""
    probes = json.loads((tiny_version / "probes.json").read_text())
    graphs = OnnxGraphs(tiny_version, SessionConfig(device="cpu"))
    assert len(probes["probes"]) == 16
    for name, beam in (("greedy", 1), ("beam4", 4)):
        sources = [p["source_ids"] for p in probes["probes"]]
        replayed = [h[0].tokens for h in translate_ids(graphs, sources, DecodeOptions(beam_size=beam), max_batch=16)]
        assert replayed == [p[name] for p in probes["probes"]]
    assert len(probes["heldout"]["pairs"]) == 32  # the whole tiny test set: fewer than 100 pairs
    assert probes["heldout"]["chrf"] == pytest.approx(100.0)


def test_manifest_is_plain_json_a_client_can_read(tiny_version):
    data = json.loads((tiny_version / MANIFEST).read_text())
    assert data["format"] == 5 and data["parity"]["passed"] is True
    assert os.path.getsize(tiny_version / MANIFEST) < 64_000


@pytest.mark.parametrize("format_, why", [(1, "per-row positions"), (2, "grown copy of the cache"),
                                         (3, "fixed number of best tokens"),
                                         (4, "one cross-attention cache entry per row")])
def test_a_version_of_an_older_graph_format_is_refused_with_what_to_do(tiny_version, tmp_path, format_, why):
    """Format 1 decoder steps make every row share one length; format 2 steps return the grown
    cache instead of the new position's keys; format 3 steps take no top-k width; format 4
    steps read a cross-attention entry per row, not per source: the engine runs none of them."""
    old = tmp_path / "1"
    shutil.copytree(tiny_version, old)
    data = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps({**data, "format": format_}))
    with pytest.raises(ModelVersionError, match=f"{why}.*export the version again with rosetta-export"):
        load_manifest(old)


def stored_copies(version_dir: Path, checkpoint) -> dict[str, int]:
    """How many times the version's files store each weight matrix of `checkpoint`: inside a graph
    or in the shared weights file, as it is or transposed, in fp32 or fp16."""
    def key(array: np.ndarray) -> tuple:
        return array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest()

    names = {}
    for name, tensor in unique_state_dict(checkpoint.model).items():
        if tensor.dim() == 2:
            matrix = tensor.float().numpy()
            for form in (matrix, matrix.T):
                for dtype in (np.float32, np.float16):
                    names[key(form.astype(dtype))] = name
    stored = [numpy_helper.to_array(i) for graph in ("encoder.onnx", "decoder.onnx")
              for i in onnx.load(str(version_dir / graph), load_external_data=False).graph.initializer
              if i.data_location != onnx.TensorProto.EXTERNAL]
    weights = load_manifest(version_dir).weights
    stored += list(load_file(version_dir / weights).values()) if weights else []
    copies = dict.fromkeys(names.values(), 0)
    for array in stored:
        if key(array) in names:
            copies[names[key(array)]] += 1
    return copies


def layout_before_shared_weights(checkpoint_dir: Path, version_dir: Path, out: Path) -> Path:
    """`version_dir` as exports wrote it before the graphs shared a weights file: the fp32 graphs
    exported from `checkpoint_dir`, each with its weights inside, and a manifest naming no weights
    file (probes and tokenizer copied from `version_dir`)."""
    out.mkdir(parents=True)
    export_graphs(load_checkpoint(checkpoint_dir).model, out)
    manifest = json.loads((version_dir / MANIFEST).read_text())
    del manifest["weights"]
    for name in (manifest["tokenizer"], manifest["probes"]):
        shutil.copyfile(version_dir / name, out / name)
    manifest["files"] = {p.name: file_record(p) for p in sorted(out.iterdir())}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module")
def tiny_before_shared_weights(tiny_checkpoint, tiny_version, tmp_path_factory) -> Path:
    """The tiny version in the layout before shared weights, as version 1 of its own repository."""
    return layout_before_shared_weights(tiny_checkpoint, tiny_version, tmp_path_factory.mktemp("before") / "1")


def test_each_weight_is_stored_once_in_the_file_both_graphs_read(tiny_version, tiny_checkpoint,
                                                                  tiny_before_shared_weights):
    copies = stored_copies(tiny_version, load_checkpoint(tiny_checkpoint))
    assert copies and set(copies.values()) == {1}
    for graph in ("encoder.onnx", "decoder.onnx"):  # both read the tied embedding from the one file
        model = onnx.load(str(tiny_version / graph), load_external_data=False)
        external = {i.name: {e.key: e.value for e in i.external_data} for i in model.graph.initializer
                    if i.data_location == onnx.TensorProto.EXTERNAL}
        assert {e["location"] for e in external.values()} == {"weights.safetensors"}
        assert "weights/source_embedding.tokens.weight" in external
    # The count sees a weight stored twice: the layout before this one had the embedding in each graph.
    assert stored_copies(tiny_before_shared_weights,
                         load_checkpoint(tiny_checkpoint))["source_embedding.tokens.weight"] == 2


def test_a_version_in_the_layout_before_shared_weights_still_loads_and_passes_the_gate(tiny_version,
                                                                                       tiny_before_shared_weights):
    before = tiny_before_shared_weights
    assert "weights" not in json.loads((before / MANIFEST).read_text())
    loaded = Gate(SessionConfig(device="cpu")).check(before, "tiny", 1)  # checksums, load, smoke, probes
    sources = [source for source, _ in tiny_pairs()]
    now = OnnxGraphs(tiny_version, SessionConfig(device="cpu"))
    assert loaded.translator.translate(sources, beam_size=4) == [target for _, target in tiny_pairs()]
    source_ids = np.asarray(random_batch([9, 6], vocab=now.config.vocab_size))
    assert all(np.array_equal(a, b) for a, b in zip(sum(loaded.translator.graphs.encode(source_ids), []),
                                                   sum(now.encode(source_ids), [])))
    with pytest.raises(ValueError, match="hold their own weights"):  # training starts from its checkpoint
        load_checkpoint(before)


def test_an_fp16_checkpoint_is_stored_in_fp16_and_served_with_exactly_its_fp32_values(tiny_checkpoint, tmp_path):
    """The default model's case: fp16 weights in the file, Casts that ONNX Runtime folds at load."""
    original = load_checkpoint(tiny_checkpoint)
    half = save_checkpoint(tmp_path / "half", original.model, original.tokenizer, original.info, dtype=torch.float16)
    version_dir, report = export_version(half, tmp_path / "models", "tiny", tiny_pairs(), beam_sizes=(1,))
    assert report.passed and report.translations[0].identical == 32
    # The shared file is the checkpoint's own weights file, byte for byte, and loads as one.
    assert sha256_file(version_dir / "weights.safetensors") == sha256_file(half / WEIGHTS)
    assert set(stored_copies(version_dir, load_checkpoint(half)).values()) == {1}
    decoder = onnx.load(str(version_dir / "decoder.onnx"), load_external_data=False)
    assert any(n.op_type == "Cast" and n.input[0].startswith("weights/") for n in decoder.graph.node)
    # ONNX Runtime folds the Casts when the session loads: no fp16 weight is left in the graph it runs...
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(version_dir / "decoder.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not [i.name for i in optimized.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    # ...and it computes exactly what fp32 graphs holding the same weights inside compute.
    before = layout_before_shared_weights(half, version_dir, tmp_path / "before")
    new, old = (OnnxGraphs(d, SessionConfig(device="cpu")) for d in (version_dir, before))
    source_ids = np.asarray(random_batch([9, 6], vocab=new.config.vocab_size))
    mask = source_ids != new.config.pad_id
    new_cross, old_cross = new.encode(source_ids), old.encode(source_ids)
    assert all(np.array_equal(a, b) for a, b in zip(sum(new_cross, []), sum(old_cross, [])))
    tokens = np.full((2, 1), new.config.bos_id, dtype=np.int64)
    first = (np.zeros(2, np.int64), np.ones(2, bool))  # positions, eos_allowed
    new_step = new.step_logits(tokens, *first, *new_cross, mask, *new.empty_cache(2))
    old_step = old.step_logits(tokens, *first, *old_cross, mask, *old.empty_cache(2))
    assert np.array_equal(new_step[0], old_step[0])
    assert all(np.array_equal(a, b) for a, b in zip(new_step[1] + new_step[2], old_step[1] + old_step[2]))
