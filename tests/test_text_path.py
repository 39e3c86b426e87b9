"""The text path's guarantees (server/runtime/text.py), held even when the model errs.

The property tests drive the text path with stand-in models that translate nothing and get the
sentinels wrong on purpose (drop, repeat, swap, invent them, cut the sentence short): whatever
the model does, every protected span and glossary term must come out, tags must stay
well-formed, and every sentence must get a translation. The real model is tried at the end.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.masking import Close, Open, Protected, mask, unmask
from model.search import DecodeOptions, Hypothesis
from model.spans import non_overlapping, protected_spans
from model.tokenizer import Tokenizer
from server.runtime.markup import Block, Format, Verbatim, parse
from server.runtime.segmenter import cut_to_fit, split_sentences
from server.runtime.text import TextJob, TextOptions, run_jobs
from tests.versions import DEFAULT_VERSION

TOKENIZER = Tokenizer.load(DEFAULT_VERSION / "tokenizer.model").with_sentinels()
PLAIN_TOKENIZER = Tokenizer.load(DEFAULT_VERSION / "tokenizer.model")
WINDOW = 256


# -- sentences ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, sentences", [
    ("Click OK. Exit now.", ["Click OK. ", "Exit now."]),
    ("Use a tool, e.g. Firefox or Chrome.", ["Use a tool, e.g. Firefox or Chrome."]),
    ("Install version 3.2. Then restart.", ["Install version 3.2. ", "Then restart."]),
    ("Version 3.2.1 is out. It fixes bugs.", ["Version 3.2.1 is out. ", "It fixes bugs."]),
    ("Ask Dr. Smith. He knows.", ["Ask Dr. Smith. ", "He knows."]),
    ("J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
    ("Really? Yes! Fine…  Done.", ["Really? ", "Yes! ", "Fine…  ", "Done."]),
    ("He said \"Stop.\" Then he left.", ["He said \"Stop.\" ", "Then he left."]),
    ("Costs 3.50 dollars. See the file list.txt now.", ["Costs 3.50 dollars. ", "See the file list.txt now."]),
    ("Press <x1> to save. <x2> opens a file.", ["Press <x1> to save. ", "<x2> opens a file."]),
    ("First line\nsecond line", ["First line\n", "second line"]),
    ("Hola. ¿Qué tal?", ["Hola. ", "¿Qué tal?"]),
    ("see p. 4 and fig. 2 for details.", ["see p. 4 and fig. 2 for details."]),
])
def test_sentences_split_where_a_reader_would(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


@given(st.text(max_size=300))
def test_the_sentences_of_any_text_join_back_to_it(text: str) -> None:
    assert "".join(split_sentences(text)) == text


@given(st.text(alphabet="ab ,;:.-\n", min_size=1, max_size=300))
def test_a_long_text_is_cut_into_parts_that_fit_and_join_back(text: str) -> None:
    parts = cut_to_fit(text, lambda t: len(t) <= 40)
    assert "".join(parts) == text
    assert all(len(p) <= 40 or " " not in p.strip() and "\n" not in p.strip() for p in parts)


# -- markup ---------------------------------------------------------------------------------
def _joined(parts) -> str:
    def source(piece):
        if isinstance(piece, str):
            return piece
        return piece.source if isinstance(piece, Protected) else piece.tag
    return "".join(p.text if isinstance(p, Verbatim) else "".join(source(x) for x in p.pieces) for p in parts)


@given(st.lists(st.sampled_from(["<p>", "</p>", "<b>", "</b>", "<a href='x?a=1&amp;b'>", "</a>", "text ", "more. ",
                                 "&amp;", "&#169;", "<br/>", "<img src=x>", "<code>x<y</code>", "<!-- c -->", "\n",
                                 "<span translate=\"no\">", "</span>", "<li>", "</li>", " ", "A < B"]),
                max_size=30), st.sampled_from([Format.HTML, Format.XML, Format.PLAIN]))
def test_parsing_keeps_every_character_of_the_text(chunks: list[str], fmt: Format) -> None:
    text = "".join(chunks)
    assert _joined(parse(text, fmt)) == text


def test_block_elements_separate_blocks_and_inline_elements_stay_in_them() -> None:
    parts = parse('<p>Click <b>Save</b> &amp; go.</p><pre>keep  this</pre><p class="x notranslate">no</p>', Format.HTML)
    blocks = [p for p in parts if isinstance(p, Block)]
    assert blocks == [Block(("Click ", Open("<b>"), "Save", Close("</b>"), " ",
                             Protected("&amp;", "&amp;", "entity"), " go."))]
    assert Verbatim("<pre>keep  this</pre>") in parts and Verbatim('<p class="x notranslate">no</p>') in parts


# -- sentinels ------------------------------------------------------------------------------
def test_a_masked_sentence_numbers_its_sentinels_and_unmasks_back() -> None:
    masked = mask(["Usage: ", Protected("%s", "%s"), " [", Open("<b>"), "options", Close("</b>"), "] ",
                   Protected("%d", "%d")])
    assert masked.text == "Usage: <x1> [<g1>options</g1>] <x2>"
    assert unmask("Uso: <x1> [<g1>opciones</g1>] <x2>", masked).text == "Uso: %s [<b>opciones</b>] %d"
    assert unmask("Uso: <x2> <x1>", masked).problems == ("<g1> pair incomplete",)
    assert set(unmask("Uso: <x1> <x1> </g1>x<g1> <x7>", masked).problems) >= {
        "<x1> repeated", "</g1> out of order", "<x7> invented", "<x2> missing"}


@pytest.mark.parametrize("text, found", [
    ("Usage: %s [options] %1$s %.2f %% %d", ["%s", "%1$s", "%.2f", "%%", "%d"]),
    ("50% of users and/or admins", []),
    ("Hello {name}, {0} {{count}} ${HOME} $(ARG1) %PRODUCTNAME %1 #PAGE#",
     ["{name}", "{0}", "{{count}}", "${HOME}", "$(ARG1)", "%PRODUCTNAME", "%1", "#PAGE#"]),
    ("In %FOLDER the %LANGUAGENAME script %EXTENSION %X %Lf", ["%FOLDER", "%LANGUAGENAME", "%EXTENSION", "%X", "%Lf"]),
    ("See https://example.org/a?b=1. Mail me@example.com or /usr/bin/ls, C:\\Temp\\x.txt",
     ["https://example.org/a?b=1", "me@example.com", "/usr/bin/ls", "C:\\Temp\\x.txt"]),
    ("Thanks 😀👍🏽 ok \ue000", ["😀👍🏽", "\ue000"]),
    ("A literal <x1> stays", ["<x1>"]),
])
def test_protected_spans_are_found(text: str, found: list[str]) -> None:
    spans = non_overlapping(protected_spans(text, PLAIN_TOKENIZER.knows))
    assert [s.output for s in spans] == found


# -- the guarantees, with a model that errs -------------------------------------------------
class ErringModel:
    """Translates nothing (words come back upper-cased) and mishandles sentinels as told."""

    def __init__(self, tokenizer: Tokenizer, seed: int, *, errors: bool, drop_tail: bool = False) -> None:
        self.tokenizer, self.rng, self.errors, self.drop_tail = tokenizer, random.Random(seed), errors, drop_tail

    def __call__(self, batch: list[list[int]]) -> list[list[Hypothesis]]:
        return [[Hypothesis(self.tokenizer.encode(self._translate(self.tokenizer.decode(ids))), -0.5)]
                for ids in batch]

    def _translate(self, source: str) -> str:
        words = re.split(r"(</?[gx][0-9]+>)", source)
        out = [w if w.startswith("<") else w.upper() for w in words]
        if self.errors and self.rng.random() < 0.5:
            sentinels = [i for i, w in enumerate(out) if w.startswith("<")]
            choice = self.rng.choice(["drop", "repeat", "swap", "invent"])
            if choice == "drop" and sentinels:
                out[self.rng.choice(sentinels)] = ""
            elif choice == "repeat" and sentinels:
                out.append(out[self.rng.choice(sentinels)])
            elif choice == "swap" and len(sentinels) > 1:
                i, j = self.rng.sample(sentinels, 2)
                out[i], out[j] = out[j], out[i]
            else:
                out.append("<x29>")
        text = "".join(out)
        if self.drop_tail and len(text.split()) >= 10:
            text = " ".join(text.split()[:3])
        return text


def _tags(text: str) -> list[str]:
    events: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            events.append(tag)

        def handle_endtag(self, tag):
            events.append("/" + tag)

    Collect().feed(text)
    return events


def _well_formed(events: list[str]) -> bool:
    stack: list[str] = []
    for e in events:
        if e.startswith("/"):
            if not stack or stack.pop() != e[1:]:
                return False
        elif e not in ("br", "img"):
            stack.append(e)
    return not stack


WORDS = st.sampled_from(["open", "the", "file", "now", "and", "save", "it", "OK.", "Exit", "settings", "user",
                         "click", "e.g.", "version", "3.2.", "Done!", "path", "then", "close"])
PLACEHOLDER_LIST = ["%s", "%d", "{name}", "{0}", "$(ARG1)", "%PRODUCTNAME", "https://x.org/a", "me@x.org",
                    "/etc/hosts", "😀", "%1$s"]
PLACEHOLDERS = st.sampled_from(PLACEHOLDER_LIST)


@st.composite
def html_texts(draw) -> tuple[str, list[str]]:
    """Random HTML: words, placeholders and (nested) inline tags; returns it and its placeholders."""
    out, placeholders = [], []

    def run(depth: int) -> None:
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(["word", "word", "word", "placeholder", "tag"] if depth < 3 else ["word"]))
            if kind == "word":
                out.append(draw(WORDS) + " ")
            elif kind == "placeholder":
                placeholders.append(draw(PLACEHOLDERS))
                out.append(placeholders[-1] + " ")
            else:
                tag = draw(st.sampled_from(["b", "i", "em", "a"]))
                out.append(f"<{tag}>" if tag != "a" else '<a href="https://x.org/?a=1&amp;b=2">')
                run(depth + 1)
                out.append(f"</{tag}> ")

    for _ in range(draw(st.integers(1, 3))):
        out.append("<p>")
        run(0)
        out.append("</p>")
    return "".join(out), placeholders


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(html_texts(), st.integers(0, 10**6), st.booleans())
def test_markup_and_placeholders_survive_any_model_error(case: tuple[str, list[str]], seed: int,
                                                          sentinels: bool) -> None:
    text, placeholders = case
    tokenizer = TOKENIZER if sentinels else PLAIN_TOKENIZER
    job = TextJob(text, tokenizer, WINDOW, options=TextOptions(format=Format.HTML))
    (result,) = run_jobs([job], ErringModel(tokenizer, seed, errors=True))
    output = result.texts[0]
    assert Counter(_tags(output)) == Counter(_tags(text)) and _well_formed(_tags(output))
    for p in placeholders:
        assert output.count(p) >= text.count(p), (p, output)
    assert output.count("&amp;") == text.count("&amp;")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(WORDS, PLACEHOLDERS), min_size=1, max_size=40), st.integers(0, 10**6),
       st.lists(st.sampled_from([("file", "fichero"), ("user", "usuario"), ("settings", "ajustes")]), max_size=2))
def test_placeholders_and_glossary_terms_survive_any_model_error(tokens: list[str], seed: int,
                                                                 glossary: list[tuple[str, str]]) -> None:
    text = " ".join(tokens)
    job = TextJob(text, TOKENIZER, WINDOW, options=TextOptions(glossary=tuple(glossary)))
    (result,) = run_jobs([job], ErringModel(TOKENIZER, seed, errors=True))
    output = result.texts[0]
    for placeholder in PLACEHOLDER_LIST:
        assert output.count(placeholder) >= text.count(placeholder), (placeholder, output)
    for source, target in glossary:
        expected = len(re.findall(rf"(?<!\w){source}(?!\w)", text, re.IGNORECASE))
        assert output.count(target) >= expected
        assert [t for t in result.report.glossary if t[1] == target] == [(source, target)] * expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(WORDS, min_size=1, max_size=12), min_size=1, max_size=8), st.integers(0, 10**6))
def test_every_sentence_gets_a_translation(sentences: list[list[str]], seed: int) -> None:
    text = " ".join(" ".join(words).rstrip(".!") + "." for words in sentences)
    received: list[str] = []

    def model(batch):
        received.extend(TOKENIZER.decode(ids) for ids in batch)
        return ErringModel(TOKENIZER, seed, errors=False)(batch)

    (result,) = run_jobs([TextJob(text, TOKENIZER, WINDOW)], model)
    assert received == [s.strip() for s in split_sentences(text)]  # each sentence alone, none left out
    assert result.texts[0] == text.upper()  # each sentence's translation in its place, spacing kept
    assert result.sentences == len(received) == len(result.report.confidence)


def test_a_sentence_longer_than_the_window_is_cut_at_clauses_not_refused() -> None:
    clause = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"
    text = ", ".join([clause] * 20) + "."
    seen: list[int] = []

    def model(batch):
        seen.extend(map(len, batch))
        return ErringModel(TOKENIZER, 0, errors=False)(batch)

    (result,) = run_jobs([TextJob(text, TOKENIZER, WINDOW)], model)
    assert len(TOKENIZER.encode(text)) > WINDOW and max(seen) <= WINDOW
    assert result.texts[0] == text.upper()
    assert "translated in" in result.report.repairs[0]


def test_a_suspected_omission_is_translated_again_in_parts() -> None:
    text = "Open the file in the editor, change the settings you need, and save it under a new name."
    (result,) = run_jobs([TextJob(text, TOKENIZER, WINDOW)], ErringModel(TOKENIZER, 0, errors=False, drop_tail=True))
    assert "much shorter" in result.report.repairs[0]
    assert "SAVE IT UNDER A NEW NAME" in result.texts[0]


def test_n_best_translations_are_whole_texts_best_first() -> None:
    def model(batch):
        return [[Hypothesis(TOKENIZER.encode("uno <x1>"), -0.1), Hypothesis(TOKENIZER.encode("dos <x1>"), -0.9)]
                for _ in batch]

    (result,) = run_jobs([TextJob("One %s.", TOKENIZER, WINDOW, n_best=2)], model)
    assert result.texts == ["uno %s", "dos %s"] and result.scores == [-0.1, -0.9]


# -- the committed default model ------------------------------------------------------------
@pytest.fixture(scope="module")
def translator():
    from server.runtime import Translator

    return Translator(DEFAULT_VERSION)


def test_the_default_model_translates_every_sentence_and_keeps_symbols(translator) -> None:
    (result,) = translator.translate_texts(["Click OK. Exit now. 😀 Thanks! Usage: %s [options] archive"],
                                           DecodeOptions(beam_size=1))
    assert result.sentences == 4 and len(result.report.confidence) == 4
    assert result.texts[0].count("😀") == 1 and result.texts[0].count("%s") == 1
    assert result.report.protected == ["😀", "%s"]


def test_the_default_model_translates_a_310_token_sentence_in_parts(translator) -> None:
    text = " ".join(["open the file and save it in the folder that you chose before"] * 24)
    assert len(translator.tokenizer.encode(text)) > 300
    (result,) = translator.translate_texts([text], DecodeOptions(beam_size=1))
    assert result.sentences == 1 and len(result.texts[0]) > len(text) / 2
    assert "translated in" in result.report.repairs[0]


# -- confidence -----------------------------------------------------------------------------
def test_confidence_is_the_calibrated_forecast_or_else_the_geometric_mean_token_probability() -> None:
    import math

    from server.runtime import Calibration
    from server.runtime.confidence import confidence

    parts = [Hypothesis([5, 6, 7], -0.5), Hypothesis([8], -1.0)]  # 4 and 2 positions with the end token
    mean = (-0.5 * 4 - 1.0 * 2) / 6
    assert confidence(parts, 1.0, None) == round(math.exp(mean), 4)
    assert confidence([Hypothesis([5, 6, 7], -0.5 / 4**0.5)], 1.5, None) == round(math.exp(-0.5), 4)
    calibration = Calibration(2.0, 1.0, 10, "valid.tsv", 0.1)
    assert confidence(parts, 1.0, calibration) == round(1 / (1 + math.exp(-(2.0 * mean + 1.0))), 4)


def test_the_calibration_fit_recovers_a_known_curve() -> None:
    import numpy as np

    from export.calibration import _fit_logistic

    x = np.linspace(-2.5, 0, 300)
    slope, intercept = _fit_logistic(x, 1 / (1 + np.exp(-(3.0 * x + 2.0))))
    assert abs(slope - 3.0) < 0.05 and abs(intercept - 2.0) < 0.05


def test_a_kept_piece_is_never_glued_to_a_word_the_source_kept_apart() -> None:
    def model(batch):  # drops the comma and glues the number to the placeholder, as models do
        return [[Hypothesis(TOKENIZER.encode(TOKENIZER.decode(ids).replace(", ", "").replace(",", "")), -0.1)]
                for ids in batch]

    for tokenizer in (TOKENIZER, PLAIN_TOKENIZER):
        (result,) = run_jobs([TextJob("%1, 60% Lighter", tokenizer, WINDOW)], model)
        assert result.texts[0].startswith("%1 60"), result.texts[0]
    (result,) = run_jobs([TextJob("file%sx2", TOKENIZER, WINDOW)], model)
    assert result.texts[0] == "file%sx2"


def test_evaluate_scores_a_file_with_an_over_long_paragraph_to_its_end(tmp_path, capsys) -> None:
    import json

    from export.evaluate import main as evaluate

    paragraph = " ".join(["Open the file, change the settings and save it in the folder you chose"] * 20)
    (tmp_path / "test.tsv").write_text(f"{paragraph}\tAbra el archivo.\nOpen the file.\tAbra el archivo.\n")
    assert evaluate(["--model", str(DEFAULT_VERSION), "--test", str(tmp_path / "test.tsv"), "--beam", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sentences"] == 2 and result["repairs"] >= 1


def test_a_misplaced_sentinel_takes_the_beams_next_hypothesis_before_any_repair() -> None:
    def model(batch):
        return [[Hypothesis(TOKENIZER.encode("uno <x1> <x1>"), -0.1), Hypothesis(TOKENIZER.encode("dos <x1>"), -0.4)]
                for _ in batch]

    (result,) = run_jobs([TextJob("One %s.", TOKENIZER, WINDOW)], model)
    assert result.texts == ["dos %s"] and result.scores == [-0.4]
    assert "the next one that placed every sentinel taken" in result.report.repairs[0]
