"""Decoding options and the search rules every decoder applies identically.

Both the PyTorch reference decoder (model/decoding.py) and the ONNX Runtime decoder in
server/runtime/ use these: the options, the output budget, the score, and the greedy and beam
bookkeeping, so "the same options" means the same search and the two decoders differ only in
how they compute the next-token log-probabilities. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


MAX_BEAM_SIZE = 16  # the exported decoder step returns each row's best 2 * MAX_BEAM_SIZE tokens
# What a caller gets without asking: the service, the Translator, rosetta-evaluate, the export's
# parity run and the probes' held-out score (docs/benchmarks.md: beam 4 against greedy on the test split).
DEFAULT_BEAM_SIZE = 4


@dataclass(frozen=True)
class DecodeOptions:
    """How to search for a translation.

    beam_size: 1 is greedy search; more keeps that many hypotheses per sentence.
    length_penalty: hypotheses are ranked by log-probability / length**length_penalty
        (0 = raw log-probability, which favours short outputs; 1 = per-token average).
    min_length: generated tokens before EOS is allowed (EOS excluded from the count);
        min_length == max_length asks for exactly that many tokens (benchmarks use it).
    max_length: most generated tokens, EOS included; None means `auto_max_length`.
    n_best: hypotheses returned per sentence, best first (at most beam_size).
    """

    beam_size: int = 1
    length_penalty: float = 1.0
    min_length: int = 0
    max_length: int | None = None
    n_best: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(f"beam_size must be between 1 and {MAX_BEAM_SIZE}, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must be between 1 and beam_size ({self.beam_size}), got {self.n_best}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must not exceed max_length ({self.max_length})")
        if not 0.0 <= self.length_penalty <= 10.0:
            raise ValueError(f"length_penalty must be in [0, 10], got {self.length_penalty}")

    def target_limit(self, source_length: int, max_positions: int) -> int:
        """Most tokens (EOS included) to generate for a source of `source_length` ids (EOS included).

        Position 0 holds BOS, so at most max_positions - 1 tokens fit.
        """
        limit = self.max_length if self.max_length is not None else auto_max_length(source_length)
        return max(1, min(limit, max_positions - 1))


def auto_max_length(source_length: int) -> int:
    """Default output budget: translations rarely run past twice the source length."""
    return 2 * source_length + 10


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start: start + batch_size] for start in range(0, len(order), batch_size)]


def mode_label(beam_size: int) -> str:
    """How reports name a search: "greedy" or "beam N"."""
    return "greedy" if beam_size == 1 else f"beam {beam_size}"


def normalized_score(log_prob: float, length: int, length_penalty: float) -> float:
    """The score that ranks finished hypotheses."""
    return log_prob / (max(length, 1) ** length_penalty)


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, EOS excluded
    score: float  # normalized log-probability (see DecodeOptions.length_penalty)


@dataclass
class SentenceGreedy:
    """One sentence's greedy search state: the tokens taken and their summed log-probability."""

    tokens: list[int] = field(default_factory=list)
    log_prob: float = 0.0

    def advance(self, token: int, log_prob: float, step: int, limit: int, eos_id: int) -> bool:
        """Take the step's best token, the sentence's `step`-th; False once the sentence is done.

        EOS ends a sentence (it is scored, not kept); a sentence that reached its budget `limit`
        ends too."""
        self.log_prob += log_prob
        if token == eos_id:
            return False
        self.tokens.append(token)
        return step < limit

    def hypothesis(self, limit: int, length_penalty: float) -> Hypothesis:
        """The finished translation: its length counts the EOS that ended it, which a sentence
        stopped by its budget `limit` never generated."""
        length = len(self.tokens) + (len(self.tokens) < limit)
        return Hypothesis(self.tokens, normalized_score(self.log_prob, length, length_penalty))


@dataclass
class SentenceBeams:
    """One sentence's beam search state: the K live histories and the finished hypotheses.

    Each step the decoder ranks beam score + log p(token) over all K*V continuations and hands
    the top 2K to `advance`. In that order, an EOS ranked within the top K finishes a hypothesis;
    other tokens fill the K live beams.
    """

    k: int
    histories: list[list[int]] = field(default_factory=list)
    finished: list[Hypothesis] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.histories:
            self.histories = [[] for _ in range(self.k)]

    def advance(self, top_scores: list[float], top_index: list[int], vocab: int, step: int, limit: int,
                options: DecodeOptions, eos_id: int) -> list[tuple[int, int, float]] | None:
        """Take one step's top 2K candidates (flat index origin*V + token, best first).

        Returns the K live beams as (origin beam, token, score), or None once the sentence is
        done: K finished hypotheses that its best live beam can no longer beat, or its budget
        `limit` reached (its live beams are then finished as they are).
        """
        live = []
        for rank, (score, index) in enumerate(zip(top_scores, top_index)):
            origin, token = divmod(index, vocab)
            if token == eos_id:
                if rank < self.k:
                    self.finished.append(Hypothesis(list(self.histories[origin]),
                                                    normalized_score(score, step, options.length_penalty)))
                continue
            live.append((origin, token, score))
            if len(live) == self.k:
                break
        new_histories = [self.histories[o] + [t] for o, t, _ in live]
        if self._done(live[0][2], step, options.length_penalty):
            return None
        if step >= limit:
            self.finished.extend(Hypothesis(h, normalized_score(s, step, options.length_penalty))
                                 for h, (_, _, s) in zip(new_histories, live))
            return None
        self.histories = new_histories
        return live

    def _done(self, best_live: float, step: int, length_penalty: float) -> bool:
        """K finished hypotheses, and the best live beam, finished at the next step, could no
        longer beat the K-th best of them."""
        if len(self.finished) < self.k:
            return False
        kth_best = sorted(h.score for h in self.finished)[-self.k]
        return kth_best >= normalized_score(best_live, step + 1, length_penalty)

    def n_best(self, n: int) -> list[Hypothesis]:
        return sorted(self.finished, key=lambda h: -h.score)[:n]


@dataclass
class BeamStep:
    """What one beam-search step decided for the sentences still in the batch."""

    kept: list[int]  # batch positions of the sentences that go on
    origins: list[int]  # for each new beam row (K per kept sentence), the row it continues
    tokens: list[int]  # the token each new beam row appends
    scores: list[float]  # each new beam row's score

    def without(self, positions: list[int], k: int) -> BeamStep:
        """This step with the kept sentences at batch `positions` dropped (their K rows too)."""
        dropped = set(positions)
        stay = [j for j, i in enumerate(self.kept) if i not in dropped]
        rows = [j * k + b for j in stay for b in range(k)]
        return BeamStep([self.kept[j] for j in stay], [self.origins[r] for r in rows],
                        [self.tokens[r] for r in rows], [self.scores[r] for r in rows])

    def kept_rows(self, k: int) -> list[int]:
        """The rows (K per sentence) of the kept sentences in the step's batch."""
        return [i * k + b for i in self.kept for b in range(k)]


def advance_beams(sentences: list[SentenceBeams], active: list[int], top_scores: list[list[float]],
                  top_index: list[list[int]], vocab: int, step: int, limits: list[int], options: DecodeOptions,
                  eos_id: int) -> BeamStep:
    """Advance every live sentence (`active`: their indices in `sentences`, in batch order) by one step,
    given each one's top 2K continuations."""
    k = options.beam_size
    decision = BeamStep([], [], [], [])
    for i, sentence in enumerate(active):
        live = sentences[sentence].advance(top_scores[i], top_index[i], vocab, step, limits[sentence], options, eos_id)
        if live is None:
            continue
        decision.kept.append(i)
        decision.origins.extend(i * k + origin for origin, _, _ in live)
        decision.tokens.extend(token for _, token, _ in live)
        decision.scores.extend(score for _, _, score in live)
    return decision
