"""Do two model versions translate the test split token for token the same? (docs/export.md)

    .venv/bin/python bench/same_translations.py OLD_VERSION_DIR models/en-es/11

For a re-export that must not change the model (a new storage layout, a new exporter or
runtime): decodes every test source through the runtime with each version, greedy and beam 4,
batched as the server batches, and counts the sentences whose best hypothesis has the same
tokens. Prints one JSON line per decoding mode; exits 1 when any sentence differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.search import DecodeOptions
from model.tsv import read_tsv
from server.runtime import SessionConfig, Translator

ROOT = Path(__file__).resolve().parent.parent


def best_tokens(translator: Translator, ids: list[list[int]], beam_size: int) -> list[list[int]]:
    return [hypotheses[0].tokens for hypotheses in translator.translate_ids(ids, DecodeOptions(beam_size=beam_size),
                                                                            max_batch=32)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="a model version directory")
    parser.add_argument("second", type=Path, help="another version of the same model (same tokenizer)")
    parser.add_argument("--test", type=Path, default=ROOT / "data" / "en-es" / "test.tsv")
    parser.add_argument("--beam", type=int, default=4, help="beam size compared besides greedy")
    args = parser.parse_args(argv)
    pairs, _ = read_tsv(args.test, strict=True)
    first, second = (Translator(v, SessionConfig(device="cpu")) for v in (args.first, args.second))
    ids = first.encode([source for source, _ in pairs])
    if ids != second.encode([source for source, _ in pairs]):
        print("the two versions tokenize the test sources differently", file=sys.stderr)
        return 1
    differing = 0
    for beam_size in (1, args.beam):
        a, b = best_tokens(first, ids, beam_size), best_tokens(second, ids, beam_size)
        same = sum(x == y for x, y in zip(a, b))
        differing += len(ids) - same
        print(json.dumps({"beam_size": beam_size, "identical": same, "sentences": len(ids),
                          "first": str(args.first), "second": str(args.second)}))
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
