"""What a vocabulary shortlist costs in translation quality, for each setting tried.

    .venv/bin/python bench/shortlist_quality.py                         # the newest default version
    .venv/bin/python bench/shortlist_quality.py --per-source 100 200 --frequent 1000 1500

For each (per_source, frequent) setting a shortlist is built from the training split
(export/shortlist.py) and the test split is translated by the PyTorch reference decoder with
each sentence restricted to its list and without: the lists' sizes, the share of the
references' tokens their lists hold, BLEU and chrF both ways, and how many translations come
out the same. Results: a table, and JSON in bench/results/shortlist-quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from export.shortlist import build_shortlist
from model.checkpoint import load_checkpoint
from model.decoding import allowed_tokens, translate_ids
from model.scoring import score_translations
from model.search import DecodeOptions
from model.tsv import read_test_pairs

ROOT = Path(__file__).resolve().parent.parent


def newest_version(name: str = "en-es") -> Path:
    return max((ROOT / "models" / name).iterdir(), key=lambda p: int(p.name))


def translate(model, sources: list[list[int]], options: DecodeOptions, lists: list[np.ndarray] | None,
              batch_size: int = 32) -> list[list[int]]:
    """Best translations of `sources`, each restricted to its list (None: the whole vocabulary),
    in length-sorted batches."""
    c = model.config
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        src = torch.full((len(batch), max(len(sources[i]) for i in batch)), c.pad_id, dtype=torch.long)
        for row, i in enumerate(batch):
            src[row, : len(sources[i])] = torch.tensor(sources[i])
        allowed = None if lists is None else allowed_tokens([lists[i] for i in batch], c.vocab_size)
        for i, hypotheses in zip(batch, translate_ids(model, src, options, allowed)):
            out[i] = hypotheses[0].tokens
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", type=Path, default=None, help="a published model version (default: the newest)")
    p.add_argument("--train", type=Path, default=ROOT / "data" / "en-es" / "train.tsv")
    p.add_argument("--test", type=Path, default=ROOT / "data" / "en-es" / "test.tsv")
    p.add_argument("--sentences", type=int, default=0, help="the first N test pairs (0: all)")
    p.add_argument("--per-source", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--frequent", type=int, nargs="+", default=[500, 1000, 1500])
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shortlist-quality.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.version or newest_version())
    model, tokenizer, c = checkpoint.model.eval(), checkpoint.tokenizer, checkpoint.model.config
    train = [(tokenizer.encode(s), tokenizer.encode(t)) for s, t in read_test_pairs(args.train)]
    test = read_test_pairs(args.test)[: args.sentences or None]
    sources = tokenizer.encode_sources([s for s, _ in test], c.max_positions)
    references = [t for _, t in test]
    options = DecodeOptions(beam_size=args.beam)
    full = translate(model, sources, options, None)
    full_scores = score_translations(tokenizer.decode_batch(full), references)
    print(f"whole vocabulary ({c.vocab_size}): BLEU {full_scores['bleu']:.2f}, chrF {full_scores['chrf']:.2f}")
    rows = []
    for per_source in args.per_source:
        for frequent in args.frequent:
            start = time.perf_counter()
            shortlist = build_shortlist(train, c.vocab_size, per_source=per_source, frequent=frequent,
                                        always=(c.eos_id, c.unk_id))
            built = time.perf_counter() - start
            lists = [shortlist.for_source(ids) for ids in sources]
            covered = np.mean([np.isin(tokenizer.encode(t), own).mean() for t, own in zip(references, lists)])
            restricted = translate(model, sources, options, lists)
            scores = score_translations(tokenizer.decode_batch(restricted), references)
            row = {"per_source": per_source, "frequent": frequent, "built_s": round(built, 1),
                   "list_mean": round(float(np.mean([len(x) for x in lists]))),
                   "list_max": max(len(x) for x in lists), "reference_tokens_covered": round(float(covered), 4),
                   "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
                   "same": sum(a == b for a, b in zip(full, restricted)), "sentences": len(test)}
            rows.append(row)
            print(f"per source {per_source}, frequent {frequent}: list {row['list_mean']} tokens on average "
                  f"(max {row['list_max']}), references' tokens covered {covered:.3f}, BLEU {row['bleu']:.2f} "
                  f"(whole vocabulary {full_scores['bleu']:.2f}), chrF {row['chrf']:.2f}, the same "
                  f"{row['same']}/{len(test)} (built in {built:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    version = (args.version or newest_version()).resolve()
    shown = version.relative_to(ROOT) if version.is_relative_to(ROOT) else version
    args.out.write_text(json.dumps({"version": str(shown), "beam": args.beam,
                                    "whole_vocabulary": {k: round(v, 2) for k, v in full_scores.items()},
                                    "settings": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
