"""The default English-Spanish corpus and its deterministic train/valid/test split.

Three domains: Bible verses (World English Bible -> Reina-Valera 1909, modern orthography),
LibreOffice help paragraphs, and everyday phrases (data/phrases/en-es.tsv, written for this
project: greetings, questions, travel, shopping... which the other two lack). Neither big
corpus is split randomly by line, because neighbouring lines are near-duplicates that would
leak into the test set:
- Bible: whole books go to valid or test (verses repeat across chapters of a book).
- LibreOffice help: blocks of 50 consecutive paragraphs (about one help page) are assigned by a
  hash of the block number.
- Phrases: each pair by a hash of its source.
Training pairs whose source sentence also occurs in valid or test are then dropped. The phrases
are few and short (about 0.3% of the training tokens once), so their training pairs are repeated
PHRASES_REPEAT times. test.tsv and valid.tsv hold the Bible and LibreOffice help only, so that
BLEU stays comparable across models; the phrases have their own valid and test files.

`rosetta-prepare-data` writes data/en-es/{train,valid,test}.tsv and per-domain test/valid files.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from model.format_data import prepare_format
from model.tsv import read_tsv, write_tsv

BIBLE_FILE = "en-es.refs.tsv.gz"
LOHELP_FILE = "lohelp.en-es.tsv.gz"
TEST_BOOKS = frozenset({"Esth", "Lam", "Phil", "Col", "1Thess", "2Tim", "1Pet"})
VALID_BOOKS = frozenset({"Eccl", "Gal", "Jas"})
LOHELP_BLOCK = 50
LOHELP_TEST_PERCENT = 4
LOHELP_VALID_PERCENT = 3
PHRASES_FILE = Path("data/phrases/en-es.tsv")
PHRASES_TEST_PERCENT = 10
PHRASES_VALID_PERCENT = 5
PHRASES_REPEAT = 8

Pairs = list[tuple[str, str]]


def _clean(text: str) -> str:
    return " ".join(text.split())


def split_bible(path: Path) -> dict[str, Pairs]:
    """Bible pairs by split, assigned by book."""
    splits: dict[str, Pairs] = {"train": [], "valid": [], "test": []}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in rows:
            en, es = _clean(row["en_web"]), _clean(row["es_rv1909_modern_orthography"])
            if not en or not es:
                continue
            book = row["ref"].split(".")[0]
            split = "test" if book in TEST_BOOKS else "valid" if book in VALID_BOOKS else "train"
            splits[split].append((en, es))
    return splits


def lohelp_split_of_block(block: int) -> str:
    bucket = int(hashlib.sha256(f"lohelp-block-{block}".encode()).hexdigest(), 16) % 100
    if bucket < LOHELP_TEST_PERCENT:
        return "test"
    if bucket < LOHELP_TEST_PERCENT + LOHELP_VALID_PERCENT:
        return "valid"
    return "train"


def split_lohelp(path: Path) -> dict[str, Pairs]:
    """LibreOffice help pairs by split, assigned by block of consecutive paragraphs."""
    splits: dict[str, Pairs] = {"train": [], "valid": [], "test": []}
    for en, es, split in _lohelp_rows(path):
        splits[split].append((en, es))
    return splits


def lohelp_split_of_source(path: Path) -> dict[str, str]:
    """The split of each LibreOffice help source paragraph (a held-out one wins a repeat)."""
    split_of: dict[str, str] = {}
    for en, _, split in _lohelp_rows(path):
        if split_of.get(en, "train") == "train":
            split_of[en] = split
    return split_of


def _lohelp_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for index, line in enumerate(f):
            columns = line.rstrip("\n").split("\t")
            if len(columns) != 2:
                continue
            en, es = _clean(columns[0]), _clean(columns[1])
            if en and es:
                yield en, es, lohelp_split_of_block(index // LOHELP_BLOCK)


def split_phrases(path: Path) -> dict[str, Pairs]:
    """Everyday phrase pairs by split, assigned by a hash of the source."""
    splits: dict[str, Pairs] = {"train": [], "valid": [], "test": []}
    for en, es in read_tsv(path, strict=True)[0]:
        bucket = int(hashlib.sha256(f"phrase-{en}".encode()).hexdigest(), 16) % 100
        split = ("test" if bucket < PHRASES_TEST_PERCENT else
                 "valid" if bucket < PHRASES_TEST_PERCENT + PHRASES_VALID_PERCENT else "train")
        splits[split].append((en, es))
    return splits


def drop_overlap(train: Pairs, held_out: Pairs) -> Pairs:
    """Training pairs whose source does not occur (case-insensitively) in the held-out pairs."""
    seen = {en.lower() for en, _ in held_out}
    return [(en, es) for en, es in train if en.lower() not in seen]


def prepare(corpus_dir: Path, out_dir: Path, phrases: Path = PHRASES_FILE) -> dict[str, int]:
    """Write the split files; return the number of pairs in each."""
    bible = split_bible(corpus_dir / BIBLE_FILE)
    lohelp = split_lohelp(corpus_dir / LOHELP_FILE)
    everyday = split_phrases(phrases)
    out_dir.mkdir(parents=True, exist_ok=True)
    held_out = [pair for domain in (bible, lohelp, everyday) for split in ("valid", "test") for pair in domain[split]]
    files = {
        "train.tsv": drop_overlap(bible["train"] + lohelp["train"] + everyday["train"] * PHRASES_REPEAT, held_out),
        "valid.tsv": bible["valid"] + lohelp["valid"],
        "test.tsv": bible["test"] + lohelp["test"],
        "valid.bible.tsv": bible["valid"],
        "valid.lohelp.tsv": lohelp["valid"],
        "valid.phrases.tsv": everyday["valid"],
        "test.bible.tsv": bible["test"],
        "test.lohelp.tsv": lohelp["test"],
        "test.phrases.tsv": everyday["test"],
    }
    files |= prepare_format(corpus_dir, files["train.tsv"], {en.lower() for en, _ in held_out}, lohelp_split_of_source(corpus_dir / LOHELP_FILE),
                            common_characters(files["train.tsv"]))
    for name, pairs in files.items():
        write_tsv(out_dir / name, pairs)
    return {name: len(pairs) for name, pairs in files.items()}


def common_characters(pairs: Pairs, coverage: float = 0.9999) -> Callable[[str], bool]:
    """Whether a character is among the most frequent ones that together make up `coverage` of the
    training text: the alphabet a tokenizer trained on it spells (the rest are protected spans)."""
    counts = Counter(char for pair in pairs for text in pair for char in text)
    total, running, alphabet = sum(counts.values()), 0, set()
    for char, n in counts.most_common():
        if running >= coverage * total:
            break
        alphabet.add(char)
        running += n
    return alphabet.__contains__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Split the default English-Spanish corpus into train/valid/test TSV files.")
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="folder holding the gzipped corpora")
    parser.add_argument("--out", type=Path, default=Path("data/en-es"), help="folder for the split TSV files")
    parser.add_argument("--phrases", type=Path, default=PHRASES_FILE, help="everyday phrase pairs, TSV")
    args = parser.parse_args(argv)
    counts = prepare(args.corpus, args.out, args.phrases)
    for name, n in counts.items():
        print(f"{args.out / name}: {n} pairs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
