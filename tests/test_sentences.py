"""Texts into sentences and back: what the service does to every text before and after the model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.sentences import Segment, join, split, split_by_lengths


def test_a_paragraph_splits_into_sentences_that_keep_their_spacing():
    text = "  Open the file.  Save it!\nClose the window? "
    segments = split(text, "en")
    assert [s.sentence for s in segments] == ["Open the file.", "Save it!", "Close the window?"]
    assert join(segments, [s.sentence for s in segments]) == text
    assert join(segments, ["A.", "B!", "C?"]) == "  A.  B!\nC? "


def test_whitespace_only_text_has_no_sentence():
    assert split(" \n\t ", "en") == []


@given(st.text(max_size=200))
def test_joining_the_sentences_themselves_gives_back_any_text_that_has_one(text):
    segments = split(text, "en")
    if segments:
        assert join(segments, [s.sentence for s in segments]) == text
    assert all(s.sentence == s.sentence.strip() and s.sentence for s in segments)


def test_join_refuses_a_translation_count_that_does_not_match():
    with pytest.raises(ValueError):
        join([Segment("", "A.", "")], ["A.", "B."])


def test_split_by_lengths_cuts_consecutive_groups_and_checks_the_total():
    assert split_by_lengths("abcdef", [1, 3, 0, 2]) == [["a"], ["b", "c", "d"], [], ["e", "f"]]
    with pytest.raises(ValueError):
        split_by_lengths([1, 2, 3], [1, 1])
