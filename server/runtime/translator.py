"""Text in, text out: a model version's tokenizer and graphs behind one call.

    translator = Translator("models/en-es/11")
    translator.translate(["Hello world."], beam_size=4)

Resources (sessions, tokenizer) are loaded once, in the constructor; decoding options are
keyword arguments of each call. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.search import DEFAULT_BEAM_SIZE, DecodeOptions, Hypothesis
from model.tokenizer import Tokenizer
from server.runtime.engine import Abandoned, Scheduler, translate_ids
from server.runtime.graphs import OnnxGraphs
from server.runtime.repository import Manifest
from server.runtime.sessions import SessionConfig
from server.runtime.text import TextJob, TextOptions, TextTranslation, decoding_options, run_jobs


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # normalized log-probability
    tokens: int  # generated tokens, EOS excluded


class Translator:
    """A loaded model version, ready to translate."""

    def __init__(self, version_dir: str | Path, session_config: SessionConfig = SessionConfig(), *,
                 manifest: Manifest | None = None) -> None:
        """manifest: the version's, already verified (None: read and verify it here)."""
        self.graphs = OnnxGraphs(version_dir, session_config, manifest=manifest)
        self.manifest = self.graphs.manifest
        self.tokenizer = Tokenizer.load(self.graphs.dir / self.manifest.tokenizer)
        # The long-lived scheduler that concurrent callers (the service) share; its engines'
        # threads run only while there is work.
        self.scheduler = Scheduler(self.graphs, max_rows=session_config.rows_limit(self.provider))

    @property
    def provider(self) -> str:
        return self.graphs.provider

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Model input ids of each text. Raises SourceTooLongError (a ValueError) for an over-long text."""
        return self.tokenizer.encode_sources(list(texts), self.graphs.config.max_positions)

    def translate_hypotheses(
        self,
        texts: Sequence[str],
        *,
        beam_size: int = DEFAULT_BEAM_SIZE,
        length_penalty: float = 1.0,
        min_length: int = 0,
        max_length: int | None = None,
        n_best: int = 1,
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[Translation]]:
        """The n best translations of each text, best first.

        beam_size: 1 = greedy search. length_penalty: scores are log p / length**length_penalty.
        min_length / max_length: generated tokens (max_length None = twice the source plus 10).
        n_best: translations returned per text (at most beam_size).
        batch_size: sentences in flight at most; shorter texts are admitted first.
        on_batch: called with the number of texts as they finish (progress reporting).
        """
        options = DecodeOptions(beam_size=beam_size, length_penalty=length_penalty, min_length=min_length,
                                max_length=max_length, n_best=n_best)
        decoded = self.translate_ids(self.encode(texts), options, max_batch=batch_size, on_batch=on_batch)
        return [[self._translation(h) for h in hypotheses] for hypotheses in decoded]

    def translate_ids(self, ids: Sequence[Sequence[int]], options: DecodeOptions, *, max_batch: int = 32,
                      abandoned: Abandoned | None = None,
                      on_batch: Callable[[int], None] | None = None) -> list[list[Hypothesis]]:
        """Hypotheses for encoded sentences, in order: the runtime's one batch entry point
        (server/runtime/engine.py). abandoned(i): nobody waits for sentence i any more."""
        return translate_ids(self.graphs, ids, options, max_batch=max_batch, abandoned=abandoned, on_batch=on_batch)

    def text_job(self, text: str, *, options: TextOptions = TextOptions(), n_best: int = 1,
                 length_penalty: float = 1.0) -> TextJob:
        """`text` through the text path (server/runtime/text.py), to be driven by the caller."""
        return TextJob(text, self.tokenizer, self.graphs.config.max_positions, options=options, n_best=n_best,
                       length_penalty=length_penalty, calibration=self.manifest.confidence)

    def translate_texts(self, texts: Sequence[str], options: DecodeOptions = DecodeOptions(beam_size=DEFAULT_BEAM_SIZE),
                        *, text_options: TextOptions = TextOptions(), batch_size: int = 32,
                        on_batch: Callable[[int], None] | None = None) -> list[TextTranslation]:
        """Texts through the text path: split into sentences, protected, repaired where the model
        errs. What the service and rosetta-evaluate translate with."""
        jobs = [self.text_job(text, options=text_options, n_best=options.n_best, length_penalty=options.length_penalty)
                for text in texts]
        decoding = decoding_options(options)
        return run_jobs(jobs, lambda ids: self.translate_ids(ids, decoding, max_batch=batch_size, on_batch=on_batch))

    def translate(self, texts: Sequence[str], **options) -> list[str]:
        """The best translation of each text; options as in `translate_hypotheses`."""
        return [hyps[0].text for hyps in self.translate_hypotheses(texts, **options)]

    def _translation(self, hypothesis: Hypothesis) -> Translation:
        return Translation(self.tokenizer.decode(hypothesis.tokens), hypothesis.score, len(hypothesis.tokens))
