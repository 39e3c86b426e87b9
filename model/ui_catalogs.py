"""LibreOffice's UI translations as parallel text: `rosetta-extract-ui`.

The Debian package `libreoffice-l10n-es` holds gettext catalogs (`*.mo`) of LibreOffice's own
interface, translated by people: software messages full of placeholders (`%PRODUCTNAME`,
`$(ARG1)`, `%1`). This reads them from the package file into `data/corpus/loui.en-es.tsv.gz`
(committed, so that `make data` never downloads). Only LibreOffice's catalogs are read: the
gettext catalogs other Debian packages install for their own messages hold the project's
held-back UI test strings and must stay out of training.

    apt-get download libreoffice-l10n-es
    rosetta-extract-ui --deb libreoffice-l10n-es_*.deb --out data/corpus/loui.en-es.tsv.gz
"""

from __future__ import annotations

import argparse
import gettext
import gzip
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CATALOGS = "usr/lib/libreoffice/program/resource/es/LC_MESSAGES"
# Keyboard mnemonics: `~Open` (LibreOffice) and `_Open` (GTK .ui files) mark the underlined letter.
_MNEMONIC = re.compile(r"~|(?<![\w_$(])_(?=\w)")


def catalog_pairs(mo_bytes: bytes) -> list[tuple[str, str]]:
    """The (English, Spanish) messages of one catalog, mnemonics removed, whitespace collapsed;
    untranslated and plural entries are skipped."""
    catalog = gettext.GNUTranslations(io.BytesIO(mo_bytes))._catalog  # type: ignore[attr-defined]
    pairs = []
    for key, value in catalog.items():
        if isinstance(key, tuple) or not key or not value:
            continue
        source = key.split("\x04", 1)[-1]
        en, es = (" ".join(_MNEMONIC.sub("", text).split()) for text in (source, value))
        if en and es:
            pairs.append((en, es))
    return pairs


def extract(deb: Path) -> list[tuple[str, str]]:
    """Every distinct pair of the package's catalogs, sorted (the file is reproducible)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        pairs = {pair for mo in sorted((Path(tmp) / CATALOGS).glob("*.mo")) for pair in catalog_pairs(mo.read_bytes())}
    return sorted(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Extract LibreOffice's UI translations from libreoffice-l10n-es.")
    parser.add_argument("--deb", type=Path, required=True, help="the libreoffice-l10n-es .deb file")
    parser.add_argument("--out", type=Path, required=True, help="gzipped TSV to write")
    args = parser.parse_args(argv)
    pairs = extract(args.deb)
    with gzip.GzipFile(args.out, "wb", mtime=0) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
        for en, es in pairs:
            f.write(f"{en}\t{es}\n")
    print(f"{args.out}: {len(pairs)} pairs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
