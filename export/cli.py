"""`rosetta-export`: checkpoint -> verified, versioned model in the repository, in one command.

    rosetta-export runs/en-es/best --repository models --name en-es --test data/en-es/test.tsv

Exports the encoder and decoder-step graphs, converts them to the requested precision, runs
the parity gate (export/parity.py) against the checkpoint, and publishes the version as
`<repository>/<name>/<next version>/` only if the gate passes. A failed gate prints the report
and exits 1, leaving the repository as it was. With `--shortlist-corpus`, the version also holds
a vocabulary shortlist built from that corpus (export/shortlist.py) and the step over it, which
the runtime then decodes with; the gate checks the step both ways.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path

import onnx

from export.calibration import fit_calibration
from export.onnx_export import GRAPH_OPTIMIZATIONS, export_graphs
from export.parity import verify
from export.probes import write_probes
from export.publish import publish, staging_dir, write_manifest
from export.quantize import PRECISIONS, convert
from export.shortlist import build_shortlist
from export.weights import share_weights
from model.checkpoint import TOKENIZER, load_checkpoint
from model.progress import progress_bar
from model.search import DEFAULT_BEAM_SIZE
from model.tsv import TsvError, read_test_pairs, read_tsv
from server.runtime import (SHORTLIST_FILE, Manifest, OnnxGraphs, ParityReport, SessionConfig, Shortlist, file_record,
                            sha256_file)

log = logging.getLogger("rosetta.export")


def library_versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime-gpu", "numpy")}


def graph_opset(path: Path) -> int:
    """The ONNX opset a saved graph imports (int8 graphs need a later one than the export's)."""
    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def build_manifest(staging: Path, checkpoint, name: str, precision: str, graphs: dict[str, str], weights: str,
                   optimizations: list[str], shortlist: str = "") -> Manifest:
    info = checkpoint.info
    return Manifest(
        name=name,
        version=0,  # set by publish()
        source_lang=info.get("source_lang", "en"),
        target_lang=info.get("target_lang", "es"),
        precision=precision,
        model=checkpoint.config.to_dict(),
        graphs=graphs,
        tokenizer=TOKENIZER,
        files={p.name: file_record(p) for p in sorted(staging.iterdir()) if not p.name.startswith(".")},
        opset=max(graph_opset(staging / g) for g in graphs.values()),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        weights=weights,
        shortlist=shortlist,
        source_checkpoint={"path": str(checkpoint.path), "sha256": sha256_file(checkpoint.weights),
                           "step": info.get("step"), "valid": info.get("valid", {})},
        libraries=library_versions(),
        optimizations=optimizations,
    )


def export_version(checkpoint_path: Path, repository: Path, name: str, test_pairs: list[tuple[str, str]], *,
                   precision: str = "fp32", beam_sizes: tuple[int, ...] = (1, 4), batch_size: int = 32,
                   progress: bool = False, calibrate_on: Path | None = None,
                   shortlist: ShortlistSettings | None = None) -> tuple[Path | None, ParityReport]:
    """Export, verify and (if the gate passes) publish one version.

    calibrate_on: held-out pairs (TSV) to fit the version's confidence calibration on; None for none.
    shortlist: build a vocabulary shortlist and its step into the version; None for none.

    Returns the published version directory, or None when the gate failed, and the parity report.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    staging = staging_dir(repository / name)
    try:
        started = time.perf_counter()
        graphs = export_graphs(checkpoint.model, staging, shortlist=shortlist is not None)
        paths = [staging / f for f in graphs.values()]
        optimizations = GRAPH_OPTIMIZATIONS + convert(paths, precision)
        weights = share_weights(checkpoint.model, paths)
        checkpoint.tokenizer.save(staging / TOKENIZER)
        if shortlist is not None:
            shortlist.build(checkpoint).save(staging / SHORTLIST_FILE)
        manifest = build_manifest(staging, checkpoint, name, precision, graphs, weights, optimizations,
                                  shortlist=SHORTLIST_FILE if shortlist is not None else "")
        write_manifest(staging, manifest)
        export_seconds = time.perf_counter() - started
        onnx_graphs = OnnxGraphs(staging, SessionConfig(device="cpu"))
        total = len(test_pairs) * len(beam_sizes) * 2 * (2 if shortlist is not None else 1)  # both ways
        with progress_bar(total=total, desc="parity", unit="sent", disable=not progress) as bar:
            report = verify(checkpoint.model, onnx_graphs, checkpoint.tokenizer, test_pairs, precision,
                            beam_sizes=beam_sizes, batch_size=batch_size, progress=bar.update)
        report = replace(report, export_seconds=round(export_seconds, 1),
                         bytes=sum(r["bytes"] for r in manifest.files.values()))
        if not report.passed:
            shutil.rmtree(staging)
            return None, report
        probes = write_probes(staging, onnx_graphs, checkpoint.tokenizer, test_pairs)
        calibration = None if calibrate_on is None else fit_calibration(
            onnx_graphs, checkpoint.tokenizer, read_test_pairs(calibrate_on), source=calibrate_on, batch_size=batch_size)
        manifest = replace(manifest, probes=probes, parity=report, confidence=calibration,
                           files={**manifest.files, probes: file_record(staging / probes)})
        return publish(staging, manifest), report
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass(frozen=True)
class ShortlistSettings:
    """How a version's vocabulary shortlist is built (export/shortlist.py)."""

    corpus: Path  # parallel TSV, e.g. the training split
    per_source: int = 200
    frequent: int = 500

    def build(self, checkpoint) -> Shortlist:
        pairs, _ = read_tsv(self.corpus)
        if not pairs:
            raise TsvError(f"{self.corpus} holds no pairs")
        tokenizer, c = checkpoint.tokenizer, checkpoint.config
        log.info("building the vocabulary shortlist from %d pairs", len(pairs))
        return build_shortlist([(tokenizer.encode(s), tokenizer.encode(t)) for s, t in pairs], c.vocab_size,
                               per_source=self.per_source, frequent=self.frequent, always=(c.eos_id, c.unk_id))


def summary(report: ParityReport) -> str:
    diffs = report.tensors.max_abs_diff
    lines = [f"tensors ({report.tensors.cases} shape cases): max abs diff encoder {diffs['encoder']:.2e}, "
             f"logits {diffs['logits']:.2e}, cache {diffs['cache']:.2e}"]
    for run in report.translations:
        lines.append(f"{run.mode}: {run.identical}/{run.sentences} identical to PyTorch; "
                     f"BLEU {run.onnxruntime.bleu:.2f} (PyTorch {run.pytorch.bleu:.2f}), "
                     f"chrF {run.onnxruntime.chrf:.2f} (PyTorch {run.pytorch.chrf:.2f})")
    lines.append("parity gate: passed" if report.passed else "parity gate: FAILED\n  " + "\n  ".join(report.failures))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a checkpoint to a verified ONNX model version.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", type=Path,
                   help="a checkpoint directory (e.g. runs/en-es/best), or a published fp32/fp16 version to "
                        "export again (e.g. as int8)")
    p.add_argument("--repository", type=Path, default=Path("models"), help="model repository root")
    p.add_argument("--name", default="en-es", help="model name: the version goes to <repository>/<name>/<N>/")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--test", type=Path, required=True, help="TSV (source<TAB>reference) for the parity gate")
    p.add_argument("--parity-sentences", type=int, default=0, help="use only the first N test pairs (0 = all)")
    p.add_argument("--beam", type=int, default=DEFAULT_BEAM_SIZE, help="beam size checked besides greedy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--report", type=Path, help="also write the parity report here as JSON")
    p.add_argument("--shortlist-corpus", type=Path, metavar="TRAIN_TSV",
                   help="build a vocabulary shortlist from these pairs (e.g. data/en-es/train.tsv) into the version: "
                        "each sentence's step then computes only its likely target tokens (docs/benchmarks.md)")
    p.add_argument("--shortlist-per-source", type=int, default=ShortlistSettings.per_source,
                   help="candidate target tokens listed per source token")
    p.add_argument("--shortlist-frequent", type=int, default=ShortlistSettings.frequent,
                   help="most frequent target tokens listed for every sentence")
    p.add_argument("--calibrate", type=Path, metavar="VALID_TSV",
                   help="fit the confidence calibration the text path reports with on these held-out pairs (e.g. "
                        "data/en-es/valid.tsv); without it the confidence is the geometric mean token probability")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shortlist_corpus is not None and args.precision != "fp32":
        parser.error("--shortlist-corpus: fp32 only (int8 passes its gate with one but gains nothing, as the "
                     "listed rows' product runs in fp32; fp16 is unchecked: docs/export.md)")
    # force: a library may have configured the root logger at import (onnxruntime's quantizer does).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        pairs = read_test_pairs(args.test)
    except (TsvError, OSError) as e:
        print(f"rosetta-export: {e}", file=sys.stderr)
        return 2
    pairs = pairs[: args.parity_sentences or None]
    shortlist = None if args.shortlist_corpus is None else ShortlistSettings(
        args.shortlist_corpus, args.shortlist_per_source, args.shortlist_frequent)
    version_dir, report = export_version(args.checkpoint, args.repository, args.name, pairs, precision=args.precision,
                                         beam_sizes=(1, args.beam), batch_size=args.batch_size, progress=True,
                                         calibrate_on=args.calibrate, shortlist=shortlist)
    if args.report:
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(summary(report), file=sys.stderr)
    if version_dir is None:
        print(f"rosetta-export: not published: the {args.precision} export failed its parity gate", file=sys.stderr)
        return 1
    print(f"published {version_dir}", file=sys.stderr)
    print(json.dumps({"version_dir": str(version_dir), "passed": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
