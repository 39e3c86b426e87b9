"""Does a sentence translate the same alone and inside a batch? (docs/export.md)

    .venv/bin/python bench/batch_independence.py models/en-es/11 [more version dirs]

Takes every 30th source of the test split (64 sentences), sorts them by length and decodes
them greedily all together as one batch (one stream), then each alone, and counts the
sentences whose tokens are the same both ways. A server that batches requests needs all of
them to be.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.search import DecodeOptions
from model.tsv import read_tsv
from server.runtime import SessionConfig, Translator

ROOT = Path(__file__).resolve().parent.parent


def same_alone_and_batched(version_dir: Path, sources: list[str]) -> int:
    translator = Translator(version_dir, SessionConfig(device="cpu", streams=1))
    ids = translator.encode(sources)
    together = translator.translate_ids(ids, DecodeOptions(), max_batch=len(ids))
    return sum(translator.translate_ids([one], DecodeOptions())[0][0].tokens == batched[0].tokens
               for one, batched in zip(ids, together))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", type=Path, nargs="+", help="model version directories")
    parser.add_argument("--test", type=Path, default=ROOT / "data" / "en-es" / "test.tsv")
    args = parser.parse_args(argv)
    pairs, _ = read_tsv(args.test, strict=True)
    sources = [source for source, _ in pairs[::30]][:64]
    for version_dir in args.versions:
        same = same_alone_and_batched(version_dir, sources)
        print(f"{version_dir}: {same} / {len(sources)} the same alone and in the batch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
