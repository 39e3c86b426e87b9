"""Translation with the PyTorch reference decoder, scoring with sacreBLEU, and `rosetta-evaluate`.

`rosetta-evaluate --model PATH --test FILE.tsv [--beam N] [--batch-size N]` is a stable contract:
progress goes to stderr and the last stdout line is one JSON object with at least
`bleu`, `chrf` (sacreBLEU defaults), `sentences` and `seconds`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import sacrebleu
import torch
from tqdm import tqdm

from model.batching import pad
from model.checkpoint import load_checkpoint
from model.decode_options import DecodeOptions
from model.decoding import Hypothesis, translate_ids
from model.tokenizer import EOS_ID, Tokenizer
from model.transformer import Transformer
from model.tsv import TsvError, read_tsv


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus sacreBLEU and chrF with sacreBLEU's default settings."""
    return {
        "bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
        "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score,
    }


def encode_sources(tokenizer: Tokenizer, texts: Sequence[str], max_positions: int) -> list[list[int]]:
    """Source ids with EOS; a text longer than the model's maximum is an error, never truncated."""
    encoded = []
    for i, ids in enumerate(tokenizer.encode_batch(list(texts))):
        if len(ids) + 1 > max_positions:
            raise ValueError(f"text {i} has {len(ids) + 1} tokens; the model accepts at most {max_positions}")
        encoded.append(ids + [EOS_ID])
    return encoded


def translate_hypotheses(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    options: DecodeOptions = DecodeOptions(),
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[list[Hypothesis]]:
    """n-best hypotheses for each text, decoded in length-sorted batches (results in input order)."""
    encoded = encode_sources(tokenizer, texts, model.config.max_positions)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[Hypothesis]] = [[] for _ in encoded]
    bar = tqdm(total=len(encoded), desc="translate", unit="sent", disable=not progress, file=sys.stderr)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        src = pad([encoded[i] for i in chunk]).to(device)
        for i, hyps in zip(chunk, translate_ids(model, src, options)):
            results[i] = hyps
        bar.update(len(chunk))
    bar.close()
    return results


def translate_texts(model: Transformer, tokenizer: Tokenizer, texts: Sequence[str], **kwargs) -> list[str]:
    """The best translation of each text."""
    return [tokenizer.decode(hyps[0].tokens) for hyps in translate_hypotheses(model, tokenizer, texts, **kwargs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Translate a TSV test set (source<TAB>reference) and score it.")
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint directory")
    parser.add_argument("--test", type=Path, required=True, help="TSV file: source<TAB>reference, no header")
    parser.add_argument("--beam", type=int, default=4, help="beam size (1 = greedy)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per decoding batch")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--output", type=Path, help="also write the translations here, one per line")
    args = parser.parse_args(argv)
    try:
        pairs, _ = read_tsv(args.test, strict=True)
    except (TsvError, OSError) as e:
        print(f"rosetta-evaluate: {e}", file=sys.stderr)
        return 2
    checkpoint = load_checkpoint(args.model)
    options = DecodeOptions(beam_size=args.beam, length_penalty=args.length_penalty)
    start = time.perf_counter()
    hypotheses = translate_texts(checkpoint.model, checkpoint.tokenizer, [s for s, _ in pairs], options=options,
                                 batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - start
    if args.output:
        args.output.write_text("".join(h + "\n" for h in hypotheses))
    result = score_translations(hypotheses, [r for _, r in pairs])
    result.update({"sentences": len(pairs), "seconds": round(seconds, 3), "beam": args.beam,
                   "model": str(args.model), "engine": "pytorch"})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
