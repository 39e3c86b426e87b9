"""The decode loop: step-level (continuous) batching over one model version's graphs.

An `Engine` holds the rows in flight (sentences x beams) in one key/value cache and advances
them together, one decoder step at a time. Between two steps finished sentences leave and
waiting ones join, their sources encoded as they join: a sentence never waits for a batch to
end, and a batch never waits for its longest sentence with idle rows. Each row carries its own
position (the decoder step takes per-row positions, export/graphs.py), EOS rule and output
budget, and each sentence its own options (beam size, length penalty, min/max length, n-best),
so sentences with different options share steps. With a version's vocabulary shortlist, a step
computes only the tokens its sentences may produce, each row over its own sentence's list
(server/runtime/shortlist.py).

A `Scheduler` feeds `streams` engines from one queue of waiting sentences, lowest `priority`
first. Each engine decodes in its own thread, started when there is work and ended when there
is none, so an idle or unloaded version holds no thread. On CPUs several single-threaded
engines beat one multi-threaded one (docs/benchmarks.md); on CUDA there is one.

A sentence's translation never depends on what else is in flight or when it joined: its rows
are computed as they would be alone, up to the order in which kernels sum (tests check
token identity, alone against joined among 200 others). The search rules are model/search.py's,
which the PyTorch reference decoder (model/decoding.py) shares, so the two are token-identical
in fp32 (the export's parity gate). A sentence whose caller has gone (`abandoned`, asked at
every step) leaves at the next step. No torch here.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.search import MAX_BEAM_SIZE, DecodeOptions, Hypothesis, SentenceBeams, SentenceGreedy
from server.runtime.allocator import map_large_blocks
from server.runtime.graph_io import QUERY_GROUP, candidates_for, entries_for, query_width
from server.runtime.graphs import Cache, OnnxGraphs, Restricted, cache_shape
from server.runtime.shortlist import Shortlist, restriction
from server.runtime.static_cache import Bucket, StaticCache

log = logging.getLogger("rosetta.engine")

# What a finished sentence receives: its hypotheses, best first (an empty list when it was
# abandoned), or the error that stopped its engine.
Result = list[Hypothesis] | Exception


def _never() -> bool:
    return False


@dataclass(eq=False)
class Sentence:
    """One sentence to translate, and where its result goes.

    ids: EOS-terminated source ids. done: called once with the Result, from a decoding thread.
    abandoned: nobody waits for the result any more (cancelled, deadline passed).
    priority: admission order, lowest first.
    """

    ids: Sequence[int]
    options: DecodeOptions
    done: Callable[[Result], None]
    abandoned: Callable[[], bool] = _never
    priority: float = 0.0

    @property
    def rows(self) -> int:
        return self.options.beam_size


@dataclass(eq=False)
class _Live:
    """A sentence in an engine: its search and how many tokens it has generated."""

    sentence: Sentence
    limit: int  # output budget, EOS included
    source_length: int
    step: int = 0
    greedy: SentenceGreedy | None = None
    beams: SentenceBeams | None = None
    beam_scores: list[float] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # the engine's rows it holds, one per beam
    entries: list[int] = field(default_factory=list)  # its source's cross-attention entries, one per QUERY_GROUP beams
    shared: list[list[int]] = field(default_factory=list)  # [a][b]: how many first tokens beams a and b share
    vocabulary: np.ndarray | None = None  # the tokens it may produce (its shortlist); None: all

    @classmethod
    def start(cls, sentence: Sentence, max_positions: int, shortlist: Shortlist | None = None) -> _Live:
        k = sentence.options.beam_size
        live = cls(sentence, sentence.options.target_limit(len(sentence.ids), max_positions), len(sentence.ids),
                   vocabulary=None if shortlist is None else shortlist.for_source(sentence.ids))
        if k == 1:
            live.greedy = SentenceGreedy()
        else:  # only beam 0 is real at the start; the others would duplicate it
            live.beams, live.beam_scores = SentenceBeams(k), [0.0] + [-math.inf] * (k - 1)
            live.shared = [[0] * k for _ in range(k)]
        return live

    def fork(self, origins: list[int]) -> list[int]:
        """Beam j now continues beam origins[j] (at `step`): how many first tokens each beam's
        old history shares with its origin's (their cached columns up to that many are the
        same), with `shared` updated for the new beams. Two continuations of one origin share
        all its tokens and differ in their new ones; of two origins, what those shared."""
        old, length = self.shared, self.step - 1  # tokens in each old history
        self.shared = [[self.step if j == k else length if a == b else old[a][b] for k, b in enumerate(origins)]
                       for j, a in enumerate(origins)]
        return [old[origin][j] for j, origin in enumerate(origins)]

    @property
    def rows(self) -> int:
        return self.sentence.options.beam_size

    def result(self) -> list[Hypothesis]:
        options = self.sentence.options
        if self.greedy is not None:
            return [self.greedy.hypothesis(self.limit, options.length_penalty)]
        return self.beams.n_best(options.n_best)


class Engine:
    """The rows in flight on one stream, and the step that advances them.

    Rows are slots: a sentence holds one slot per beam for its whole life. Its source's
    cross-attention keys and values are one entry, shared by up to QUERY_GROUP of its beams
    (graph_io), written once, when it joins, and never moved: a step reads each source's entry
    once for all its beams. The self-attention cache has room for `CAPACITY_STEP` more
    positions at a time: a step reads it and its new keys and values are written into it in
    place, and a beam that continues another copies only the positions where its row and the
    other's differ. A finished sentence leaves its slots and entries free for the next one to
    join (what they hold is masked out by position, never read); free slots and entries are
    dropped when they are more than a quarter of all.
    """

    # Room is made for this many positions at once: each growth copies the cache, each spare
    # column costs every step a little attention (docs/benchmarks.md).
    CAPACITY_STEP = 16

    def __init__(self, graphs: OnnxGraphs, max_rows: int) -> None:
        self.graphs = graphs
        self.max_rows = max_rows
        map_large_blocks()  # caches freed by the engine go back to the OS (server/runtime/allocator.py)
        self._clear()

    def _clear(self) -> None:
        self.live: list[_Live] = []
        self._held = np.zeros(0, bool)  # each slot: held by a sentence (else free)
        self._tokens = np.zeros((0, 1), np.int64)
        self._positions = np.zeros(0, np.int64)  # each slot's cached tokens
        self._source_mask = np.zeros((0, 0), bool)  # each entry's real source tokens
        self._entry_held = np.zeros(0, bool)  # each cross-attention entry: held by a sentence (else free)
        self._cross: tuple[Cache, Cache] = ([], [])  # one entry per source (and QUERY_GROUP beams)
        self._grid: tuple[np.ndarray, np.ndarray] | None = None  # the step's query_grid, query_slots
        self._restricted: Restricted | None = None  # the step's shortlist (vocabulary, output_rows, allowed)
        self._past: tuple[Cache, Cache] = ([], [])
        self._origins: np.ndarray | None = None  # after a step: the slot each slot continues (beams)
        self._shared = np.zeros(0, np.int64)  # with _origins: the first column a slot's row and its origin's differ

    @property
    def rows(self) -> int:
        """Slots held by sentences."""
        return int(self._held.sum())

    @property
    def free_rows(self) -> int:
        return self.max_rows - self.rows

    @property
    def cache_bytes(self) -> int:
        """Bytes its key/value caches (self- and cross-attention) hold now."""
        itemsize = np.dtype(self.graphs.dtype).itemsize
        return sum(math.prod(cache_shape(t)) * itemsize for cache in (*self._past, *self._cross) for t in cache)

    @property
    def cache_bytes_at_most(self) -> int:
        """The most `cache_bytes` can be: a slot per row, max_rows of them or a wider sentence's
        beams (admitted alone), each slot with max_positions positions, and as many source
        tokens in a cross-attention entry per slot (greedy sentences: one each). A resize holds
        one tensor more for a moment."""
        c = self.graphs.config
        per_slot = 2 * 2 * c.decoder_layers * c.heads * c.max_positions * c.head_dim  # self and cross, keys and values
        return max(self.max_rows, MAX_BEAM_SIZE) * per_slot * np.dtype(self.graphs.dtype).itemsize

    def step(self, joining: Sequence[Sentence] = ()) -> None:
        """Admit `joining`, then give every sentence in flight its next token."""
        self._arrange(joining)
        if not self.live:
            return
        eos_allowed = self._eos_allowed()
        widest = max(live.rows for live in self.live)
        out = self.graphs.step(self._tokens, self._positions, eos_allowed, *self._cross, self._source_mask,
                               *self._past, candidates=candidates_for(widest), query=self._query_grid(widest),
                               shortlist=self._restriction())
        self._past = tuple(self.graphs.append(cache, self._positions, new)
                           for cache, new in zip(self._past, (out.keys, out.values)))
        self._advance(out.top_log_probs, out.top_ids)

    def _eos_allowed(self) -> np.ndarray:
        """Each slot: whether its sentence may end now (its min_length reached)."""
        allowed = np.zeros(len(self._held), bool)
        for live in self.live:
            allowed[live.slots] = live.step >= live.sentence.options.min_length
        return allowed

    def fail(self, error: Exception) -> None:
        """Settle every sentence in flight with `error` and start afresh."""
        for live in self.live:
            live.sentence.done(error)
        self._clear()

    def release(self) -> None:
        """Free what an idle engine holds for its next step (here: nothing, its caches shrink to
        what is in flight)."""
        self._clear()

    def _advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray) -> None:
        """Apply one step's best tokens to every sentence; finished ones free their slots."""
        c = self.graphs.config
        candidates = self._beam_candidates(top_log_probs, top_ids)
        best_ids, best_log_probs = top_ids[:, 0].tolist(), top_log_probs[:, 0].tolist()
        origins: np.ndarray | None = None  # made when a beam continues another (greedy steps skip it)
        shared = np.zeros(0, np.int64)
        tokens = self._tokens[:, 0].copy()
        going_on: list[_Live] = []
        for live in self.live:
            live.step += 1
            if live.sentence.abandoned():
                done: list[Hypothesis] | None = []
            elif live.greedy is not None:
                slot = live.slots[0]
                going = live.greedy.advance(best_ids[slot], best_log_probs[slot], live.step, live.limit, c.eos_id)
                tokens[slot] = best_ids[slot]
                done = None if going else live.result()
            else:
                scores, flat = candidates[id(live)]
                beams = live.beams.advance(scores, flat, c.vocab_size, live.step, live.limit, live.sentence.options,
                                           c.eos_id)
                if beams is not None:
                    # A row's cached column i is the same for every beam whose first i tokens are
                    # the same (column 0: the start token): only the columns after those move.
                    same_prefix = [1 + n for n in live.fork([origin for origin, _, _ in beams])]
                    continued = [live.slots[origin] for origin, _, _ in beams]
                    if continued != live.slots:
                        if origins is None:
                            origins, shared = np.arange(len(self._held)), np.zeros(len(self._held), np.int64)
                        origins[live.slots], shared[live.slots] = continued, same_prefix
                    tokens[live.slots] = [token for _, token, _ in beams]
                    live.beam_scores = [score for _, _, score in beams]
                done = None if beams is not None else live.result()
            if done is None:
                going_on.append(live)
            else:
                live.sentence.done(done)
                self._held[live.slots] = False
                self._entry_held[live.entries] = False
                self._recomposed()
        self._origins, self._shared = origins, shared
        positions = self._positions if origins is None else self._positions[origins]
        self._positions = np.where(self._held, positions + 1, 0)  # free slots: nothing cached
        self._tokens = tokens.reshape(-1, 1)
        self.live = going_on

    def _arrange(self, joining: Sequence[Sentence]) -> None:
        """The slots and entries of the next step: beams' caches reordered, newcomers in free
        slots and entries (or new ones), free ones dropped when there are many, room for the
        next position; each cache copied at most once."""
        wanted = sum(s.rows for s in joining)
        wanted_entries = sum(entries_for(s.rows) for s in joining)
        compact, compact_entries = _sparse(self._held, wanted), _sparse(self._entry_held, wanted_entries)
        if not (joining or compact or compact_entries):
            if self.live:
                self._reorder_past()
                self._fit()
            else:
                self._clear()
            return
        self._reorder_past()
        self._recomposed()
        free = self._arrange_rows(wanted, compact)
        free_entries = self._arrange_entries(joining, wanted_entries, compact_entries)
        if joining:
            self._admit(joining, free, free_entries)
        if not self.live:
            self._clear()

    def _arrange_rows(self, wanted: int, compact: bool) -> list[int]:
        """The self-attention cache's slots rearranged for `wanted` more rows; returns the slots
        the newcomers take."""
        layout, renumber, free, added = _renumbering(self._held, wanted, compact)
        for live in self.live:
            live.slots = renumber[live.slots].tolist()
        positions = np.concatenate([self._positions[layout], np.zeros(added, np.int64)])
        room = self._room(int(positions.max(initial=0)) + 1)
        self._past = tuple(self._arranged(cache, layout, added, room) for cache in self._past) \
            if self._past[0] else self.graphs.empty_cache(added, room)
        self._positions = positions
        self._tokens = np.concatenate([self._tokens[layout], np.zeros((added, 1), np.int64)])
        self._held = np.concatenate([self._held[layout], np.zeros(added, bool)])
        return free

    def _arrange_entries(self, joining: Sequence[Sentence], wanted: int, compact: bool) -> list[int]:
        """The cross-attention entries rearranged for `wanted` more, as wide as the longest
        source in flight or joining; returns the entries the newcomers take."""
        layout, renumber, free, added = _renumbering(self._entry_held, wanted, compact)
        for live in self.live:
            live.entries = renumber[live.entries].tolist()
        source_width = max([live.source_length for live in self.live] + [len(s.ids) for s in joining], default=0)
        self._cross = tuple(self._arranged(cache, layout, added, source_width) for cache in self._cross)
        mask = np.zeros((len(layout) + added, _width(self._cross[0][0]) if self._cross[0] else source_width), bool)
        old_mask = self._source_mask[layout, : mask.shape[1]]
        mask[: len(layout), : old_mask.shape[1]] = old_mask
        self._source_mask = mask
        self._entry_held = np.concatenate([self._entry_held[layout], np.zeros(added, bool)])
        return free

    def _room(self, needed: int) -> int:
        """The self-attention cache's width for `needed` positions: a multiple of CAPACITY_STEP."""
        return min(self.graphs.config.max_positions, -(-needed // self.CAPACITY_STEP) * self.CAPACITY_STEP)

    def _reorder_past(self) -> None:
        """The beams' reordering: each row that continues another beam takes a copy of the
        positions in use where their two rows differ."""
        if self._origins is not None:
            moved = np.flatnonzero(self._origins != np.arange(len(self._origins)))
            columns = np.stack([self._shared[moved], self._positions[moved]], axis=1)
            keys, values = self._past  # one move for both: its (row, column) pairs are worked out once
            both = self.graphs.move([*keys, *values], moved, self._origins[moved], columns)
            self._past = (both[: len(keys)], both[len(keys):])
            self._origins = None

    def _fit(self) -> None:
        """Room in the self-attention cache for the next position; source and cache columns
        that no sentence needs any more dropped, once they are a third."""
        room = self._room(int(self._positions.max()) + 1)
        if self._resized(_width(self._past[0][0]), room):
            self._past = tuple(self._arranged(cache, None, 0, room) for cache in self._past)
        needed = max(live.source_length for live in self.live)
        if self._resized(_width(self._cross[0][0]), needed):
            self._cross = tuple(self._arranged(cache, None, 0, needed) for cache in self._cross)
            self._source_mask = self._source_mask[:, :needed]

    @staticmethod
    def _resized(current: int, width: int) -> bool:
        """Whether a cache `current` columns wide is copied to `width`: always to widen, and to
        narrow once a third of its columns is unused."""
        return width > current or 3 * (current - width) > current

    def _arranged(self, cache: Cache, layout: np.ndarray | None, added: int, width: int) -> Cache:
        """A cache's slots `layout` in that order (None: all, in place) with `added` zero slots
        after them, `width` columns wide where more are needed, or where the copy is made
        anyway or a third of the columns is unused; the cache itself when none of that changes
        anything.

        Tensor by tensor, each replaced in `cache` (the engine's own list) as soon as its copy
        exists: a resize then holds one tensor twice, not the whole cache (the server's peak
        memory under load, docs/benchmarks.md)."""
        g = self.graphs
        if not cache:
            return cache
        current = _width(cache[0])
        rows = cache_shape(cache[0])[0]
        layout = np.arange(rows) if layout is None else layout
        moving = len(layout) != rows or not np.array_equal(layout, np.arange(rows))
        target = width if moving or self._resized(current, width) else current
        grow = added or target > current
        for i, tensor in enumerate(cache):
            if grow:
                _, heads, _, head_dim = cache_shape(tensor)
                zeros = np.zeros((added, heads, 0, head_dim), g.dtype)
                cache[i] = g.regroup([tensor], layout, (0, min(current, target)), [zeros], target)[0]
            else:
                cache[i] = g.select([tensor], layout, (0, target))[0]
        return cache

    def _admit(self, joining: Sequence[Sentence], free: list[int], free_entries: list[int]) -> None:
        """Encode the newcomers and write them into free slots (K per sentence) and entries (one
        per QUERY_GROUP beams)."""
        g, c = self.graphs, self.graphs.config
        source = pad_ids([s.ids for s in joining], c.pad_id)
        counts = [entries_for(s.rows) for s in joining]
        repeat = np.repeat(np.arange(len(joining)), counts)  # each new entry's sentence
        entries = np.array(free_entries[: len(repeat)], np.int64)
        self._write_sources(entries, [g.select(new, repeat) for new in g.encode(source)])
        self._source_mask[entries] = False
        self._source_mask[entries, : source.shape[1]] = (source != c.pad_id)[repeat]
        slots = np.array(free[: sum(s.rows for s in joining)], np.int64)
        self._positions[slots] = 0
        self._tokens[slots] = c.bos_id
        row = entry = 0
        for sentence, count in zip(joining, counts):
            live = _Live.start(sentence, c.max_positions, g.shortlist)
            live.slots = slots[row: row + sentence.rows].tolist()
            live.entries = entries[entry: entry + count].tolist()
            row, entry = row + sentence.rows, entry + count
            self._held[live.slots] = True
            self._entry_held[live.entries] = True
            self.live.append(live)

    def _write_sources(self, entries: np.ndarray, encoded: list[Cache]) -> None:
        """Newcomers' cross-attention keys and values (one cache per side, a row per entry) into
        `entries`."""
        g = self.graphs
        self._cross = tuple(g.write(cache, entries, new) for cache, new in zip(self._cross, encoded)) \
            if self._cross[0] else tuple(encoded)

    def _recomposed(self) -> None:
        """The sentences in flight or their slots changed: what was kept for their steps is stale."""
        self._grid = self._restricted = None

    def _restriction(self) -> Restricted | None:
        """The step's vocabulary shortlist (None without one, server/runtime/shortlist.py): the
        union of its sentences' lists, their output rows and each row's own share of the union.
        Kept until the sentences in flight change."""
        if self.graphs.shortlist is None:
            return None
        if self._restricted is None:
            vocabulary, allowed = restriction([live.vocabulary for live in self.live],
                                              [live.slots for live in self.live], len(self._held),
                                              self.graphs.config.vocab_size)
            self._restricted = vocabulary, self.graphs.output_rows(vocabulary), allowed
        return self._restricted

    def _query_grid(self, widest: int) -> tuple[np.ndarray, np.ndarray]:
        """The step's query_grid (entries, width) and query_slots (rows, 2) (graph_io): beam i of
        a sentence sits at slot i % QUERY_GROUP of its entry i // QUERY_GROUP; free rows and
        slots point anywhere valid (row 0, entry 0), their results unread. Kept until the
        sentences in flight change."""
        width = query_width(widest)
        if self._grid is None or self._grid[0].shape[1] != width:
            grid = np.zeros((len(self._entry_held), width), np.int64)
            slots = np.zeros((len(self._held), 2), np.int64)
            for live in self.live:
                beams = np.arange(live.rows)
                entries = np.asarray(live.entries)[beams // QUERY_GROUP]
                slots[live.slots] = np.stack([entries, beams % QUERY_GROUP], axis=1)
                grid[entries, beams % QUERY_GROUP] = live.slots
            self._grid = grid, slots
        return self._grid

    def _beam_candidates(self, top_log_probs: np.ndarray,
                         top_ids: np.ndarray) -> dict[int, tuple[list[float], list[int]]]:
        """Each beam sentence's best 2K continuations (scores, flat indices origin * V + token),
        ranked for all sentences of one beam size at once."""
        by_size: dict[int, list[_Live]] = {}
        for live in self.live:
            if live.beams is not None:
                by_size.setdefault(live.rows, []).append(live)
        out = {}
        for k, group in by_size.items():
            rows = np.array([slot for live in group for slot in live.slots])
            beam_scores = np.array([live.beam_scores for live in group], np.float32)
            scores, flat = best_continuations(beam_scores, top_log_probs[rows], top_ids[rows],
                                              self.graphs.config.vocab_size, 2 * k)
            for live, s, f in zip(group, scores.tolist(), flat.tolist()):
                out[id(live)] = (s, f)
        return out


class StaticEngine(Engine):
    """The engine on caches allocated once at their limits (server/runtime/static_cache.py):
    every slot and entry keeps its address for the engine's life, so each step runs on a
    bucket's fixed shapes, its inputs and outputs bound once, and on CUDA as two CUDA-graph
    replays (the step and its append).

    Slots and entries are `max(max_rows, MAX_BEAM_SIZE)`, each max_positions wide; newcomers take
    the lowest free ones, and a step covers the smallest bucket (1, 4, 16, ... rows) that holds
    every slot and entry in use. When the sentences in flight would fit a smaller bucket than
    their slots span (one long sentence left high after the others finished), the rows and
    entries above it move down into free ones, so that the steps shrink with the load. Beams
    continuing other beams copy whole rows in place. The search, admission and results are the
    Engine's. Every step reads max_positions columns per
    row (masked past its position): more than the resizing engine on a CPU, where attention is
    bound by reading the cache (docs/benchmarks.md); for GPUs.
    """

    BUCKET_GROWTH = 4

    def __init__(self, graphs: OnnxGraphs, max_rows: int) -> None:
        if graphs.shortlist is not None:
            raise ValueError("the static cache's steps run at fixed shapes, and a vocabulary shortlist's size "
                             "changes with the sentences in flight: serve this version with the resizing cache")
        self.slots = max(max_rows, MAX_BEAM_SIZE)
        self.cache: StaticCache | None = StaticCache(graphs, self.slots)
        self._buckets: dict[int, Bucket] = {}
        super().__init__(graphs, max_rows)

    @property
    def cache_bytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0

    def release(self) -> None:
        """Free the caches and the buckets' sessions (on CUDA, their captured graphs): the next
        step allocates, builds and captures them again."""
        self._clear()
        self.cache, self._buckets = None, {}

    def step(self, joining: Sequence[Sentence] = ()) -> None:
        """Admit `joining`, then give every sentence in flight its next token."""
        if self.cache is None:
            self.cache = StaticCache(self.graphs, self.slots)
        self._arrange(joining)
        if not self.live:
            return
        eos_allowed, rows = self._eos_allowed(), self._bucket_rows()
        grid, slots = self._query_grid(QUERY_GROUP)
        top_log_probs, top_ids = self._bucket(rows).run({
            "tokens": self._tokens[:rows], "positions": self._positions[:rows], "eos_allowed": eos_allowed[:rows],
            "source_mask": self._source_mask[:rows], "query_grid": grid[:rows], "query_slots": slots[:rows]})
        self._advance(top_log_probs, top_ids)

    def _clear(self) -> None:
        super()._clear()
        slots, width = self.slots, self.graphs.config.max_positions
        self._held, self._entry_held = np.zeros(slots, bool), np.zeros(slots, bool)
        self._tokens, self._positions = np.zeros((slots, 1), np.int64), np.zeros(slots, np.int64)
        self._source_mask = np.zeros((slots, width), bool)

    def _arrange(self, joining: Sequence[Sentence]) -> None:
        """Beams' rows copied in place; rows and entries moved down when a smaller bucket would
        hold them; newcomers into the lowest free slots and entries."""
        if self._origins is not None:
            moved = np.flatnonzero(self._origins != np.arange(len(self._origins)))
            self.cache.copy_rows(moved, self._origins[moved])
            self._origins = None
        self._move_down()
        if joining:
            free = np.flatnonzero(~self._held)[: sum(s.rows for s in joining)].tolist()
            free_entries = np.flatnonzero(~self._entry_held)[: sum(entries_for(s.rows) for s in joining)].tolist()
            self._recomposed()
            self._admit(joining, free, free_entries)

    def _write_sources(self, entries: np.ndarray, encoded: list[Cache]) -> None:
        keys, values = encoded
        self.cache.place(entries, keys, values)

    def _move_down(self) -> None:
        """Rows and entries above the smallest bucket that could hold them all move into free
        ones below it (their caches, positions, tokens and source masks with them)."""
        rows, entries = np.flatnonzero(self._held), np.flatnonzero(self._entry_held)
        if not len(rows):
            return
        fits = self._bucket_for(max(len(rows), len(entries)))
        if self._bucket_for(1 + max(int(rows[-1]), int(entries[-1]))) == fits:
            return
        targets, sources = _moves_below(self._held, fits)
        self.cache.copy_rows(targets, sources)
        self._positions[targets], self._tokens[targets] = self._positions[sources], self._tokens[sources]
        self._held[targets], self._held[sources] = True, False
        slot = np.arange(len(self._held))
        slot[sources] = targets
        targets, sources = _moves_below(self._entry_held, fits)
        self.cache.copy_entries(targets, sources)
        self._source_mask[targets] = self._source_mask[sources]
        self._entry_held[targets], self._entry_held[sources] = True, False
        entry = np.arange(len(self._entry_held))
        entry[sources] = targets
        for live in self.live:
            live.slots, live.entries = slot[live.slots].tolist(), entry[live.entries].tolist()
        self._recomposed()

    def _bucket_rows(self) -> int:
        """The smallest bucket holding every slot and entry in use."""
        return self._bucket_for(1 + max(int(np.flatnonzero(self._held).max()),
                                        int(np.flatnonzero(self._entry_held).max())))

    def _bucket_for(self, used: int) -> int:
        """The smallest bucket of at least `used` rows."""
        rows = 1
        while rows < used:
            rows *= self.BUCKET_GROWTH
        return min(rows, self.slots)

    def _bucket(self, rows: int) -> Bucket:
        if rows not in self._buckets:
            self._buckets[rows] = Bucket(self.cache, rows)
        return self._buckets[rows]


def _moves_below(held: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(targets, sources): each held slot at or above `limit` paired with a free one below it,
    lowest first; `limit` must leave enough free ones below it."""
    sources = limit + np.flatnonzero(held[limit:])
    targets = np.flatnonzero(~held[:limit])[: len(sources)]
    if len(targets) < len(sources):
        raise ValueError(f"{len(sources)} slots above {limit} cannot move into {len(targets)} free ones below it")
    return targets, sources


def _sparse(held: np.ndarray, wanted: int) -> bool:
    """Whether more than a quarter of the slots would stay free with `wanted` more held: then
    only the held ones are kept."""
    return len(held) - int(held.sum()) - wanted > len(held) // 4


def _renumbering(held: np.ndarray, wanted: int, compact: bool) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """How slots (rows or entries) are rearranged for `wanted` more: `layout`, the old slots
    kept, in their order (all, or only the held ones when compacting); `renumber`, each old
    slot's new index; the slots the newcomers take, free ones first, then `added` new ones."""
    layout = np.flatnonzero(held) if compact else np.arange(len(held))
    renumber = np.full(len(held), -1, np.int64)
    renumber[layout] = np.arange(len(layout))
    free = [] if compact else renumber[~held].tolist()
    added = max(0, wanted - len(free))
    return layout, renumber, free + list(range(len(layout), len(layout) + added)), added


def _width(tensor: np.ndarray | object) -> int:
    """Axis 2 of a cache tensor (cached positions or source tokens)."""
    return cache_shape(tensor)[2]


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """Right-pad id lists into a (B, max_len) int64 array."""
    out = np.full((len(sequences), max(len(s) for s in sequences)), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def best_continuations(beam_scores: np.ndarray, top_log_probs: np.ndarray, top_ids: np.ndarray, vocab: int,
                       n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best continuations of each sentence's beams, best first.

    beam_scores: (S, K); top_log_probs, top_ids: (S*K, >= n), each beam row's best tokens.
    Returns scores and flat indices origin_beam * V + token, (S, n) each; equal scores rank by
    flat index, as a top-k over all K*V continuations would.
    """
    sentences, k = beam_scores.shape
    scores = (beam_scores[:, :, None] + top_log_probs[:, :n].reshape(sentences, k, n)).reshape(sentences, k * n)
    flat = (np.arange(k)[None, :, None] * vocab + top_ids[:, :n].reshape(sentences, k, n)).reshape(sentences, k * n)
    order = np.lexsort((flat, -scores), axis=-1)[:, :n]
    return np.take_along_axis(scores, order, axis=-1), np.take_along_axis(flat, order, axis=-1)


class Scheduler:
    """Waiting sentences, lowest priority first, and the engines that decode them.

    max_rows: rows (sentences x beams) in flight at most, shared among `streams` engines
    (graphs.streams by default). A sentence wider than an engine's share is admitted alone.

    An engine's thread waits `LINGER_SECONDS` for more work before it ends: a thread's first
    ONNX Runtime calls cost several milliseconds (measured: 6 ms a sentence at batch 1 when
    every call started a thread), so back-to-back calls reuse it, and an idle version soon
    holds none. With `release_idle`, an engine whose thread ends frees what it holds for its
    next step (a static engine's caches, allocated at their limits): for the schedulers of
    `translate_ids`, which stay with the graphs whether called again or not; the service's
    scheduler keeps its engines' caches, sized and logged when the version loads.
    """

    LINGER_SECONDS = 2.0

    def __init__(self, graphs: OnnxGraphs, *, max_rows: int, streams: int | None = None,
                 release_idle: bool = False) -> None:
        streams = max(1, min(streams or graphs.streams, max_rows))
        self.release_idle = release_idle
        kind = StaticEngine if graphs.session_config.static_cache else Engine
        self.engines = [kind(graphs, -(-max_rows // streams)) for _ in range(streams)]
        self._waiting: list[tuple[float, int, Sentence]] = []  # a heap
        self._order = itertools.count()  # equal priorities keep their arrival order
        self._changed = threading.Condition()
        self._threads: list[threading.Thread | None] = [None] * streams

    @property
    def waiting(self) -> int:
        """Sentences submitted and not yet admitted into an engine."""
        return len(self._waiting)

    @property
    def cache_bytes_at_most(self) -> int:
        """The most its engines' key/value caches hold together: what the device's memory must
        fit beside the weights (the server logs it when it accepts a version)."""
        return sum(engine.cache_bytes_at_most for engine in self.engines)

    def submit(self, sentences: Iterable[Sentence]) -> None:
        """Queue sentences; each one's `done` is called when it is translated."""
        with self._changed:
            for sentence in sentences:
                heapq.heappush(self._waiting, (sentence.priority, next(self._order), sentence))
            self._changed.notify_all()
            for i, thread in enumerate(self._threads):
                if thread is None:
                    self._threads[i] = threading.Thread(target=self._decode, args=(i,), name=f"engine-{i}",
                                                        daemon=True)
                    self._threads[i].start()

    def _decode(self, index: int) -> None:
        """One engine's thread: admit and step while there is work."""
        engine = self.engines[index]
        while True:
            with self._changed:
                joining = self._admissions(engine)
                if not joining and not engine.live:
                    self._changed.wait(self.LINGER_SECONDS)
                    joining = self._admissions(engine)
                    if not joining:
                        self._threads[index] = None
                        if self.release_idle:  # under the lock: no new thread takes the engine meanwhile
                            engine.release()
                        return
            try:
                engine.step(joining)
            except Exception as e:  # a bug or a runtime failure: its sentences learn of it, the engine goes on
                log.exception("decoding step failed")
                for sentence in joining:
                    if sentence not in (live.sentence for live in engine.live):
                        sentence.done(e)
                engine.fail(e)

    def _admissions(self, engine: Engine) -> list[Sentence]:
        """The waiting sentences that fit in the engine now, in priority order; the abandoned
        ones are settled on the way. An empty engine takes at least one."""
        joining, free = [], engine.free_rows
        while self._waiting:
            sentence = self._waiting[0][2]
            if sentence.abandoned():
                heapq.heappop(self._waiting)
                sentence.done([])
                continue
            if sentence.rows > free and (joining or engine.live):
                break
            heapq.heappop(self._waiting)
            joining.append(sentence)
            free -= sentence.rows
        return joining


Abandoned = Callable[[int], bool]  # sentence index -> nobody waits for it any more
_SCHEDULERS_LOCK = threading.Lock()


def _schedulers(graphs: OnnxGraphs, max_rows: int) -> Scheduler:
    """The scheduler that `translate_ids` calls with these graphs and this many rows share, so
    that back-to-back calls reuse its engines' threads; idle, its engines hold no cache."""
    with _SCHEDULERS_LOCK:
        if max_rows not in graphs.schedulers:
            graphs.schedulers[max_rows] = Scheduler(graphs, max_rows=max_rows, release_idle=True)
        return graphs.schedulers[max_rows]


def translate_ids(graphs: OnnxGraphs, ids: Sequence[Sequence[int]], options: DecodeOptions, *,
                  max_batch: int = 32, abandoned: Abandoned | None = None,
                  on_batch: Callable[[int], None] | None = None) -> list[list[Hypothesis]]:
    """Translate encoded sentences (EOS-terminated id lists), at most `max_batch` in flight.

    Returns, for each sentence in the caller's order, `options.n_best` hypotheses, best first;
    an empty list for a sentence that `abandoned(i)` gave up on (asked at every step). Shorter
    sentences are admitted first. on_batch(n) as n more sentences finish (progress). A
    sentence's result never depends on the others: max_batch=1 decodes each alone (what probes
    are recorded with).
    """
    results: list[Result | None] = [None] * len(ids)
    remaining = [len(ids)]
    finished = threading.Event()
    lock = threading.Lock()

    def done(i: int, result: Result) -> None:
        with lock:
            results[i] = result
            remaining[0] -= 1
            if on_batch is not None:
                on_batch(1)
            if remaining[0] == 0:
                finished.set()

    if not ids:
        return []
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scheduler = _schedulers(graphs, max_batch * options.beam_size)
    scheduler.submit(Sentence(ids[i], options, lambda result, i=i: done(i, result),
                              (lambda i=i: abandoned(i)) if abandoned else _never, rank)
                     for rank, i in enumerate(order))
    finished.wait()
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
