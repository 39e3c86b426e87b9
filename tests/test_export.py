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

import onnx
import pytest
from onnx import numpy_helper

from export import parity
from export.cli import export_version, main as export_main
from export.evaluate import main as evaluate_main
from export.onnx_export import OPSET
from model.checkpoint import WEIGHTS, load_checkpoint, step_checkpoints
from model.search import DecodeOptions
from server.runtime import (MANIFEST, ModelVersionError, OnnxGraphs, SessionConfig, load_manifest, sha256_file,
                            translate_ids, versions)
from tests.builders import tiny_pairs

ROOT = Path(__file__).resolve().parent.parent


def tree_hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def test_fp32_parity_holds_at_every_shape(tiny_version):
    report = load_manifest(tiny_version).parity
    shapes = [tuple(shape) for shape in report["tensors"]["shapes"]]
    # The edges of every dynamic axis are covered, not only the sizes used when exporting.
    assert (1, 1, 0) in shapes and any(b == 64 for b, _, _ in shapes)
    assert any(s == 64 for _, s, _ in shapes) and any(p == 63 for _, _, p in shapes)  # the tiny model's maximum
    # fp32 in both engines: only summation order differs, ~1e-6; 1e-4 is the gate's tolerance.
    assert all(value <= 1e-4 for value in report["tensors"]["max_abs_diff"].values())
    for run in report["translations"]:
        assert run["identical"] == run["sentences"] == 32
        assert run["onnxruntime"]["bleu"] == pytest.approx(100.0)
    assert {run["beam_size"] for run in report["translations"]} == {1, 4}
    assert report["passed"] and report["failures"] == []


def test_manifest_describes_the_version_completely(tiny_version, tiny_checkpoint):
    manifest = load_manifest(tiny_version)
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert (manifest.name, manifest.version, manifest.precision) == ("tiny", 1, "fp32")
    assert (manifest.source_lang, manifest.target_lang) == ("en", "es")
    assert manifest.config == checkpoint.config
    assert manifest.opset == OPSET >= 18
    assert manifest.graphs == {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
    assert set(manifest.files) == {"encoder.onnx", "decoder.onnx", "tokenizer.model", "probes.json"}
    assert manifest.probes == "probes.json"
    for name, record in manifest.files.items():
        assert record == {"sha256": sha256_file(tiny_version / name), "bytes": (tiny_version / name).stat().st_size}
    assert manifest.source_checkpoint["sha256"] == sha256_file(tiny_checkpoint / WEIGHTS)
    assert manifest.source_checkpoint["step"] == checkpoint.info["step"]
    assert {"torch", "onnx", "onnxruntime-gpu", "onnxscript"} <= set(manifest.libraries)
    assert manifest.created.endswith("+00:00")
    assert (tiny_version / "tokenizer.model").read_bytes() == checkpoint.tokenizer.to_bytes()
    assert oct((tiny_version).stat().st_mode)[-3:] == "755"


def test_re_export_creates_the_next_version_and_leaves_older_ones_untouched(tiny_version, tiny_run, repository):
    before = tree_hashes(tiny_version)
    second = step_checkpoints(tiny_run / "checkpoints")[0]  # another checkpoint of the run
    version_dir, report = export_version(second, repository, "tiny", tiny_pairs()[:4], beam_sizes=(1,))
    assert report["passed"]
    assert version_dir.name == str(max(versions(repository / "tiny")))
    assert load_manifest(version_dir).version == int(version_dir.name) > 1
    assert tree_hashes(tiny_version) == before


@pytest.mark.parametrize("damage", ["flip a byte", "delete", "add a file", "truncate"])
def test_a_damaged_version_is_refused(tiny_version, tmp_path, damage):
    copy = tmp_path / "1"
    shutil.copytree(tiny_version, copy)
    target = copy / "decoder.onnx"
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
    with pytest.raises(ModelVersionError, match="decoder.onnx|stray.onnx"):
        load_manifest(copy)


def test_a_directory_without_manifest_is_not_a_version(tmp_path):
    with pytest.raises(ModelVersionError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_a_failed_gate_publishes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    strict = parity.Tolerance(max_abs_diff=1e-12, identical_tokens=True, max_bleu_drop=0.0)
    monkeypatch.setitem(parity.TOLERANCES, "fp32", strict)
    version_dir, report = export_version(tiny_checkpoint, tmp_path, "tiny", tiny_pairs()[:4], beam_sizes=(1,))
    assert version_dir is None and not report["passed"]
    assert any("max abs diff" in failure for failure in report["failures"])
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


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_reduced_precision_variants_load_and_stay_within_tolerance(tiny_checkpoint, tmp_path, precision):
    version_dir, report = export_version(tiny_checkpoint, tmp_path, "tiny", tiny_pairs(), precision=precision)
    assert report["passed"], report["failures"]
    manifest = load_manifest(version_dir)
    assert manifest.precision == precision
    assert any(precision in step for step in manifest.optimizations)
    tolerance = parity.TOLERANCES[precision]
    if tolerance.max_abs_diff is not None:
        assert report["tensors"]["max_abs_diff"]["logits"] <= tolerance.max_abs_diff
    for run in report["translations"]:
        assert run["bleu_change"] >= -tolerance.max_bleu_drop


def weight_bytes(version_dir: Path) -> int:
    total = 0
    for graph in ("encoder.onnx", "decoder.onnx"):
        for initializer in onnx.load(str(version_dir / graph)).graph.initializer:
            total += numpy_helper.to_array(initializer).nbytes
    return total


def test_int8_stores_every_matmul_weight_in_8_bits(tiny_version, tiny_checkpoint, tmp_path):
    version_dir, _ = export_version(tiny_checkpoint, tmp_path, "tiny", tiny_pairs()[:4], precision="int8",
                                    beam_sizes=(1,))
    for graph in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(version_dir / graph))
        weights = {w.name: w for w in model.graph.initializer}
        assert not [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
        quantized = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert quantized and all(weights[n.input[1]].data_type == onnx.TensorProto.UINT8 for n in quantized)
        assert {a.i for n in quantized for a in n.attribute if a.name == "bits"} == {8}
    # Embeddings (read by Gather) stay fp32, and this tiny model's 64 input channels are padded to
    # a block of 128, so the whole shrinks less than the 4x of the matmul weights alone.
    assert weight_bytes(version_dir) < 0.7 * weight_bytes(tiny_version)


@pytest.mark.parametrize("engine", ["checkpoint", "version"])
def test_evaluate_prints_json_and_scores_perfect_copies_at_100(engine, tiny_checkpoint, tiny_version, tiny_corpus,
                                                               capsys):
    model = tiny_checkpoint if engine == "checkpoint" else tiny_version
    assert evaluate_main(["--model", str(model), "--test", str(tiny_corpus / "valid.tsv"), "--beam", "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bleu"] == pytest.approx(100.0) and result["chrf"] == pytest.approx(100.0)
    assert result["sentences"] == 32 and result["seconds"] > 0
    assert result["engine"].startswith("pytorch" if engine == "checkpoint" else "onnxruntime")


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
    assert data["format"] == 1 and data["parity"]["passed"] is True
    assert os.path.getsize(tiny_version / MANIFEST) < 64_000
