"""The default corpus split (rosetta-prepare-data): held-out sentences never leak into training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from model.corpus import PHRASES_REPEAT, prepare
from model.sentinels import SENTINEL_PATTERN
from model.tsv import read_tsv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    out = tmp_path_factory.mktemp("en-es")
    prepare(ROOT / "data" / "corpus", out, ROOT / "data" / "phrases" / "en-es.tsv")
    return {path.name: read_tsv(path, strict=True)[0] for path in out.glob("*.tsv")}


@pytest.mark.parametrize("train", ["train.tsv", "train.format.tsv"])
def test_no_held_out_source_is_trained_on(splits, train):
    held_out = {en.lower() for name, pairs in splits.items() if not name.startswith("train") for en, _ in pairs}
    assert not held_out & {en.lower() for en, _ in splits[train]}


def test_the_format_sets_hold_placeholders_and_tags_to_measure(splits):
    """The development sets of the format issue: UI strings (hundreds with placeholders) and
    tagged help segments, none of them trained on (above)."""
    ui = splits["test.ui.tsv"]
    assert len(ui) >= 1000 and sum(1 for en, _ in ui if "%" in en or "$(" in en) >= 150
    assert len(splits["test.tagged.tsv"]) >= 400 and all("<" in en for en, _ in splits["test.tagged.tsv"])
    masked = [en for en, _ in splits["train.format.tsv"] if SENTINEL_PATTERN.search(en)]
    assert len(masked) >= 30_000


def test_test_and_valid_stay_bible_and_help_so_bleu_compares_across_models(splits):
    for split in ("test", "valid"):
        assert splits[f"{split}.tsv"] == splits[f"{split}.bible.tsv"] + splits[f"{split}.lohelp.tsv"]
    assert len(splits["test.tsv"]) == 1897 and len(splits["valid.tsv"]) == 1229


def test_every_phrase_lands_in_one_split_and_training_repeats_it(splits):
    phrases, _ = read_tsv(ROOT / "data" / "phrases" / "en-es.tsv", strict=True)
    train = Counter(splits["train.tsv"])
    held = set(splits["test.phrases.tsv"]) | set(splits["valid.phrases.tsv"])
    for pair in phrases:
        assert (pair in held) != (train[pair] == PHRASES_REPEAT), pair
    assert len(splits["test.phrases.tsv"]) >= 30, "enough everyday sentences to score"


def test_the_readme_example_is_not_in_the_phrases():
    """`rosetta-translate "Hello, world"` is a check that the model generalises, not recall."""
    phrases, _ = read_tsv(ROOT / "data" / "phrases" / "en-es.tsv", strict=True)
    assert not [en for en, _ in phrases if en.lower().strip(".!") == "hello, world"]
