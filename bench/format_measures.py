"""The format issue's measures for a model version, through the runtime's text path.

    python bench/format_measures.py [--model models/en-es/11] [--beam 4] [--limit N]

Prints one table (markdown) and a JSON line:
- placeholders: the share of development UI strings (data/en-es/test.ui.tsv, held out of
  training) whose placeholders all come out exactly, as many times as in the source; counted on
  the strings that hold any (printf, brace, shell, LibreOffice styles), by a matcher written here
  independently of the runtime's.
- tags: the share of tagged help segments (data/en-es/test.tagged.tsv) whose translation holds
  the source's tags, each as often, well nested; BLEU/chrF with the tags in, and of the same
  segments with the tags removed (translated as plain text).
- glossary: the share of sentences of data/en-es/test.lohelp.tsv holding a term of GLOSSARY whose
  translation holds every applicable term's target.
- quality: BLEU/chrF on data/en-es/test.tsv (the comparable test split) and on the UI strings.
- sentinel repairs: per set, the share of texts whose sentinels the model got wrong, translated
  between their protected pieces instead (the guarantee holds either way; the text reads worse).
Run `make data` first.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from model.scoring import score_translations
from model.search import DecodeOptions
from model.tsv import read_test_pairs
from server.runtime import Format, TextOptions, Translator, versions

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "en-es"
PLACEHOLDER = re.compile(r"%[0-9]+\$[a-z]|%\.?[0-9]*[sdfiuxc]|%%|%[0-9]+|%[A-Z][A-Z0-9_]*%?|#[A-Z][A-Z0-9_]*#"
                         r"|\$\([^()\s]+\)|\$\{[^{}\s]+\}|\{[A-Za-z0-9_]*\}")
TAG = re.compile(r"</?[A-Za-z][^<>]*>")
# Software terms and the translation a product team might prescribe (not always the model's
# own choice: "cuadro" for "box", "pulse" for "click" are the help's own; "fichero" is not).
GLOSSARY = {"file": "fichero", "folder": "carpeta", "click": "pulse", "spreadsheet": "hoja de cálculo",
            "toolbar": "barra de herramientas", "dialog": "diálogo", "cell": "celda", "chart": "gráfico",
            "slide": "diapositiva", "macro": "macro"}


def placeholders_kept(sources: list[str], outputs: list[str]) -> tuple[int, int]:
    total = kept = 0
    for source, output in zip(sources, outputs):
        wanted = Counter(PLACEHOLDER.findall(source))
        if wanted:
            total += 1
            kept += all(Counter(PLACEHOLDER.findall(output))[p] == n for p, n in wanted.items())
    return kept, total


def tags_kept(source: str, output: str) -> bool:
    if Counter(TAG.findall(output)) != Counter(TAG.findall(source)):
        return False
    stack: list[str] = []
    for tag in TAG.findall(output):
        name = re.match(r"</?([A-Za-z][\w:-]*)", tag).group(1)  # type: ignore[union-attr]
        if tag.startswith("</"):
            if not stack or stack.pop() != name:
                return False
        elif not tag.endswith("/>"):
            stack.append(name)
    return not stack


def glossary_cases(pairs: list[tuple[str, str]]) -> list[tuple[str, dict[str, str]]]:
    cases = []
    for source, _ in pairs:
        terms = {s: t for s, t in GLOSSARY.items() if re.search(rf"(?<!\w){s}(?!\w)", source, re.IGNORECASE)}
        if terms:
            cases.append((source, terms))
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="a model version directory (default: the newest of models/en-es)")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--limit", type=int, help="use only the first N pairs of each set (a quick look)")
    args = p.parse_args(argv)
    model = args.model or ROOT / "models" / "en-es" / str(versions(ROOT / "models" / "en-es")[-1])
    translator = Translator(model)
    options = DecodeOptions(beam_size=args.beam)
    sets = {name: read_test_pairs(DATA / f"{name}.tsv")[: args.limit] for name in ("test.ui", "test.tagged", "test",
                                                                                       "test.lohelp")}
    started = time.perf_counter()
    figures: dict[str, float | int | str] = {"model": str(model), "beam": args.beam}

    repaired: dict[str, float] = {}

    def translate(sources: list[str], name: str, **text) -> list[str]:
        """The best translations; records the share of texts whose sentinels the model got wrong
        (translated between their pieces instead)."""
        results = translator.translate_texts(sources, options, text_options=TextOptions(**text))
        wrong = sum(any("between its protected spans" in r for r in result.report.repairs) for result in results)
        repaired[f"{name}_sentinel_repairs"] = round(100 * wrong / len(results), 2)
        return [r.texts[0] for r in results]

    ui_sources, ui_refs = zip(*sets["test.ui"])
    ui_out = translate(list(ui_sources), "ui")
    kept, total = placeholders_kept(list(ui_sources), ui_out)
    ui_scores = score_translations(ui_out, list(ui_refs))
    figures |= {"placeholder_strings": total, "placeholders_kept": round(100 * kept / total, 2),
                "ui_strings": len(ui_out), "ui_bleu": round(ui_scores["bleu"], 2), "ui_chrf": round(ui_scores["chrf"], 2)}

    tagged_sources, tagged_refs = zip(*sets["test.tagged"])
    tagged_out = translate(list(tagged_sources), "tagged", format=Format.HTML)
    with_tags = score_translations(tagged_out, list(tagged_refs))
    plain_sources = [re.sub(TAG, "", s) for s in tagged_sources]
    plain_out = translate(plain_sources, "untagged")
    without_tags = score_translations(plain_out, [re.sub(TAG, "", r) for r in tagged_refs])
    figures |= {"tagged_segments": len(tagged_out),
                "tags_kept": round(100 * sum(map(tags_kept, tagged_sources, tagged_out)) / len(tagged_out), 2),
                "tagged_bleu": round(with_tags["bleu"], 2), "tagged_chrf": round(with_tags["chrf"], 2),
                "untagged_bleu": round(without_tags["bleu"], 2), "untagged_chrf": round(without_tags["chrf"], 2)}

    cases = glossary_cases(sets["test.lohelp"])
    applied = 0
    for (source, terms), result in zip(cases, [translator.translate_texts(
            [s], options, text_options=TextOptions(glossary=tuple(t.items())))[0] for s, t in cases]):
        applied += all(target in result.texts[0] for target in terms.values())
    figures |= {"glossary_sentences": len(cases), "glossary_applied": round(100 * applied / max(1, len(cases)), 2)}

    test_sources, test_refs = zip(*sets["test"])
    test_scores = score_translations(translate(list(test_sources), "test"), list(test_refs))
    figures |= {"test_sentences": len(test_sources), "test_bleu": round(test_scores["bleu"], 2),
                "test_chrf": round(test_scores["chrf"], 2),
                **repaired, "seconds": round(time.perf_counter() - started, 1)}

    print("| measure | figure |\n|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value} |")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
