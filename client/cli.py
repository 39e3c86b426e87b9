"""`rosetta-translate`: translate from the command line through a running server.

    rosetta-translate "Hello, world."
    echo "Hello, world." | rosetta-translate
    rosetta-translate --file input.txt --beam 4 --n-best 3 --server localhost:50051
    rosetta-translate --format html --glossary save=guardar --keep Rosetta "Click <b>Save</b> in Rosetta."

Each line of stdin or of --file is one text; translations are printed one per line (with
--n-best, each hypothesis on its own line as `score<TAB>text`, a blank line between texts).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from client.translator import TranslationError, TranslatorClient


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Translate text with a Rosetta server.")
    p.add_argument("text", nargs="?", help="text to translate (default: read stdin, one text per line)")
    p.add_argument("--file", type=Path, help="translate each line of this file")
    p.add_argument("--server", default=os.environ.get("ROSETTA_SERVER", "localhost:50051"),
                   help="host:port [env ROSETTA_SERVER; default localhost:50051]")
    p.add_argument("--model", default="", help="model name (default: the server's default model)")
    p.add_argument("--version", type=int, default=0, help="pin a model version (default: the newest)")
    p.add_argument("--beam", type=int, help="beam size (1 = greedy; default: the server's, 4)")
    p.add_argument("--n-best", type=int, help="print this many translations per text")
    p.add_argument("--format", choices=["plain", "html", "xml"], default="plain", help="how to read the text")
    p.add_argument("--glossary", action="append", default=[], metavar="SOURCE=TARGET",
                   help="translate SOURCE as TARGET, exactly (repeatable)")
    p.add_argument("--keep", action="append", default=[], metavar="TEXT", help="never translate TEXT (repeatable)")
    p.add_argument("--report", action="store_true",
                   help="after each translation, print the server's report (kept spans, tags, glossary terms, "
                        "repairs, confidence) to stderr")
    p.add_argument("--token", default=os.environ.get("ROSETTA_TOKEN"), help="bearer token [env ROSETTA_TOKEN]")
    p.add_argument("--ca", type=Path, help="PEM CA certificate: connect with TLS")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    args = p.parse_args(argv)
    if any("=" not in term for term in args.glossary):
        p.error("--glossary takes SOURCE=TARGET")
    text_options = dict(format=args.format, keep=args.keep,
                        glossary=dict(term.split("=", 1) for term in args.glossary))
    if args.text is not None:
        texts = [args.text]
    else:
        source = args.file.read_text(encoding="utf-8") if args.file else sys.stdin.read()
        texts = [line for line in source.splitlines() if line.strip()]
    client = TranslatorClient(args.server, token=args.token, timeout=args.timeout,
                              root_certificates=args.ca.read_bytes() if args.ca else None)
    try:
        with client:
            for i, text in enumerate(texts):
                result = client.translate_with_report(text, model=args.model, version=args.version,
                                                      beam_size=args.beam, n_best=args.n_best, **text_options)
                if args.n_best:
                    print("\n".join(f"{h.score:.4f}\t{h.text}" for h in result.hypotheses)
                          + ("\n" if i < len(texts) - 1 else ""))
                else:
                    print(result.translation)
                if args.report:
                    print(result.report, file=sys.stderr)
    except TranslationError as e:
        print(f"rosetta-translate: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
