"""Probes stored in every version, so a server can check a version before serving it.

`probes.json` holds what this version computed at export time, on this exporting machine:

- probes: a few test sentences with the token ids of their greedy and beam-4 translations.
  A loader that replays them (`replay`, one sentence at a time) must get the same tokens (fp32
  and int8 alike: it is the same graph on the same runtime), or the version is not what was
  verified. Another CPU family can round differently (ONNX Runtime picks kernels by
  instruction set), so export on the kind of machine that serves.
- heldout: a small sample of the test set, spread over the file, with the chrF and BLEU the
  version reached on it (beam 4). A server compares a new version's chrF on it with the
  version it serves before swapping.

No torch here: the probes are the ONNX Runtime decoder's own outputs.
"""

from __future__ import annotations

from pathlib import Path

from model.scoring import score_translations
from model.search import DEFAULT_BEAM_SIZE, DecodeOptions
from model.tokenizer import Tokenizer
from model.tsv import evenly_spaced
from server.runtime import PROBES_FILE, Heldout, OnnxGraphs, Probe, Probes, replay, translate_ids

PROBE_SENTENCES = 16
HELDOUT_SENTENCES = 100
HELDOUT_BEAM = DEFAULT_BEAM_SIZE


def build_probes(graphs: OnnxGraphs, tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> Probes:
    max_positions = graphs.config.max_positions
    probe_pairs = evenly_spaced(pairs, PROBE_SENTENCES)
    source_ids = tokenizer.encode_sources([s for s, _ in probe_pairs], max_positions)
    decoded = {name: replay(graphs, source_ids, beam) for name, beam in (("greedy", 1), ("beam4", 4))}
    probes = [Probe(source, ids, greedy, beam4)
              for (source, _), ids, greedy, beam4 in zip(probe_pairs, source_ids, decoded["greedy"], decoded["beam4"])]
    heldout = evenly_spaced(pairs, HELDOUT_SENTENCES)
    heldout_ids = tokenizer.encode_sources([s for s, _ in heldout], max_positions)
    hypotheses = [h[0].tokens for h in translate_ids(graphs, heldout_ids, DecodeOptions(beam_size=HELDOUT_BEAM),
                                                      max_batch=len(heldout_ids))]
    scores = score_translations(tokenizer.decode_batch(hypotheses), [t for _, t in heldout])
    return Probes(probes, Heldout(HELDOUT_BEAM, heldout, scores["bleu"], scores["chrf"]))


def write_probes(version_dir: Path, graphs: OnnxGraphs, tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> str:
    """Write probes.json into `version_dir`; returns its file name."""
    (version_dir / PROBES_FILE).write_text(build_probes(graphs, tokenizer, pairs).to_json())
    return PROBES_FILE
