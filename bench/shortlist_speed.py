"""Decoding speed of a version exported with a vocabulary shortlist, over it and over the whole
vocabulary, in one process, the two taking turns.

    .venv/bin/python bench/shortlist_speed.py VERSION_DIR                      # batch 1, greedy
    .venv/bin/python bench/shortlist_speed.py VERSION_DIR --streams 2 --threads 1 --batch 32 --beam 4

The version comes from `rosetta-export ... --shortlist-corpus data/en-es/train.tsv`. The test
split's first sources are translated through `translate_ids`, exactly `--tokens` tokens each
(EOS not allowed before, as in bench/decode_speed.py); each round times both ways, in an order
that alternates, and the first round is a warm-up. Prints tokens/s per round and the ratio of the
medians (shortlist over whole vocabulary).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from model.search import DecodeOptions
from model.tsv import read_test_pairs
from server.runtime import SessionConfig, Translator, translate_ids

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", type=Path)
    p.add_argument("--test", type=Path, default=ROOT / "data" / "en-es" / "test.tsv")
    p.add_argument("--sentences", type=int, default=48)
    p.add_argument("--tokens", type=int, default=24, help="generated tokens per sentence")
    p.add_argument("--batch", type=int, default=1, help="sentences in flight")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads per stream")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    translators = {ways: Translator(args.version, SessionConfig(device="cpu", streams=args.streams,
                                                                intra_op_threads=args.threads, shortlist=ways))
                   for ways in (False, True)}
    if translators[True].graphs.shortlist is None:
        raise SystemExit(f"{args.version} has no vocabulary shortlist: export it with --shortlist-corpus")
    ids = translators[False].encode([s for s, _ in read_test_pairs(args.test)[: args.sentences]])
    options = DecodeOptions(beam_size=args.beam, min_length=args.tokens, max_length=args.tokens)
    speeds: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for ways in (False, True) if round_ % 2 == 0 else (True, False):
            start = time.perf_counter()
            translate_ids(translators[ways].graphs, ids, options, max_batch=args.batch)
            speeds[ways].append(len(ids) * args.tokens / (time.perf_counter() - start))
    whole, listed = speeds[False][1:], speeds[True][1:]
    print(f"batch {args.batch}, beam {args.beam}, {args.streams} stream(s) x {args.threads} thread(s): "
          f"whole vocabulary {' '.join(f'{x:,.0f}' for x in whole)} tokens/s, shortlist "
          f"{' '.join(f'{x:,.0f}' for x in listed)} tokens/s: {statistics.median(listed) / statistics.median(whole):.2f}x")


if __name__ == "__main__":
    main()
