"""`rosetta-evaluate`: translate a test set with a checkpoint or an exported version, and score it.

    rosetta-evaluate --model PATH --test FILE.tsv [--beam N] [--batch-size N] [--format html] [--sentences N]

A stable contract that other tools call. FILE.tsv holds `source<TAB>reference` lines (no
header); a malformed line is an error naming it (exit 2). PATH is a checkpoint directory
(decoded by the PyTorch reference decoder) or a model version directory with a manifest
(decoded by ONNX Runtime, as the server does). Either way each source goes through the
runtime's text path as a server request would (sentence splitting, protected spans, markup with
--format, cutting of over-long sentences, repairs), so any file is scored to its end; the JSON
counts the repairs made. `--sentences N` scores N pairs spread evenly over the file instead (a
quick check; a test file often holds its domains one after another). Progress goes to stderr;
the last line on stdout is one JSON object with `bleu`, `chrf` (sacreBLEU defaults),
`sentences` (those scored) and `seconds`, plus the beam size, the engine and the model path.

It lives in export/ because it is the one tool that stands on both sides of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from model.progress import progress_bar
from model.scoring import score_translations
from model.search import DEFAULT_BEAM_SIZE, DecodeOptions
from model.tsv import TsvError, evenly_spaced, read_test_pairs
from server.runtime import MANIFEST, Format, TextJob, TextOptions, TextTranslation, decoding_options, run_jobs


def translate_with_version(path: Path, sources: list[str], *, options: DecodeOptions, text_options: TextOptions,
                           batch_size: int, device: str) -> tuple[list[TextTranslation], str]:
    from server.runtime import SessionConfig, Translator

    translator = Translator(path, SessionConfig(device=device or "auto"))
    with progress_bar(total=len(sources), desc="translate", unit="sent") as bar:
        results = translator.translate_texts(sources, options, text_options=text_options, batch_size=batch_size,
                                             on_batch=bar.update)
    return results, f"onnxruntime ({translator.provider}, {translator.manifest.precision})"


def translate_with_checkpoint(path: Path, sources: list[str], *, options: DecodeOptions, text_options: TextOptions,
                              batch_size: int) -> tuple[list[TextTranslation], str]:
    from model.checkpoint import load_checkpoint
    from model.translate import translate_encoded

    checkpoint = load_checkpoint(path)
    jobs = [TextJob(s, checkpoint.tokenizer, checkpoint.config.max_positions, options=text_options,
                    n_best=options.n_best, length_penalty=options.length_penalty) for s in sources]
    decoding = decoding_options(options)
    results = run_jobs(jobs, lambda ids: translate_encoded(checkpoint.model, ids, options=decoding,
                                                           batch_size=batch_size, progress=True))
    return results, "pytorch"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Translate a TSV test set (source<TAB>reference) and score it.")
    parser.add_argument("--model", type=Path, required=True,
                        help="a checkpoint directory, or a model version directory (models/<name>/<version>)")
    parser.add_argument("--test", type=Path, required=True, help="TSV file: source<TAB>reference, no header")
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM_SIZE, help="beam size (1 = greedy)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per decoding batch")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--format", choices=[f.value for f in Format], default="plain",
                        help="how to read the sources (html/xml: inline tags are placed, as the server does)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], help="for a model version (default: auto)")
    parser.add_argument("--output", type=Path, help="also write the translations here, one per line")
    parser.add_argument("--sentences", type=int, default=0,
                        help="score only this many pairs, spread evenly over the file (default: 0 = all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sentences < 0:
        parser.error(f"--sentences must be 0 (all pairs) or more, not {args.sentences}")
    try:
        pairs = evenly_spaced(read_test_pairs(args.test), args.sentences)
    except (TsvError, OSError) as e:
        print(f"rosetta-evaluate: {e}", file=sys.stderr)
        return 2
    sources = [s for s, _ in pairs]
    start = time.perf_counter()
    settings = dict(options=DecodeOptions(beam_size=args.beam, length_penalty=args.length_penalty),
                    text_options=TextOptions(format=Format(args.format)), batch_size=args.batch_size)
    if (args.model / MANIFEST).is_file():
        results, engine = translate_with_version(args.model, sources, device=args.device, **settings)
    else:
        results, engine = translate_with_checkpoint(args.model, sources, **settings)
    seconds = time.perf_counter() - start
    hypotheses = [r.texts[0] for r in results]
    if args.output:
        args.output.write_text("".join(h + "\n" for h in hypotheses))
    result = score_translations(hypotheses, [r for _, r in pairs])
    result.update({"sentences": len(pairs), "seconds": round(seconds, 3), "beam": args.beam,
                   "model": str(args.model), "engine": engine, "format": args.format,
                   "repairs": sum(len(r.report.repairs) for r in results)})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
