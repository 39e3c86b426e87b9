"""CTranslate2 as a benchmark baseline, on exactly our model's weights.

CTranslate2 has no converter for this model, so `build_ctranslate2_model` fills its Transformer
model spec weight by weight; `CTranslate2Engine` then decodes token ids with the same search
rules as our decoders (PAD and BOS never generated, EOS not before min_length, at most
max_length tokens with EOS included), so a benchmark times both on the same work. Benchmarks
only: `pip install .[bench]`.

Self-check, from the repository root (CTranslate2 greedy output == the PyTorch reference's):

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.ctranslate2_engine
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from ctranslate2.specs import attention_spec, common_spec, transformer_spec

from model.attention import CrossAttention, SelfAttention
from model.config import EOS_ID, ModelConfig
from model.transformer import FeedForward, Transformer
from server.runtime import Shortlist

# CTranslate2 finds the special tokens by these strings (its SequenceToSequenceModelConfig defaults).
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<blank>", "<unk>", "<s>", "</s>"
VOCABULARY_FILE = "shared_vocabulary.json"  # what CTranslate2 writes for identical source and target vocabularies
POSITIONS_KEY = "rosetta_max_positions"  # our own entry in config.json: CTranslate2 ignores keys it does not know


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy().copy()


def _set_linear(spec: common_spec.LinearSpec, linear: torch.nn.Linear) -> None:
    """CTranslate2 stores Linear weights as (out, in), as PyTorch does."""
    spec.weight = _array(linear.weight)
    spec.bias = _array(linear.bias)


def _set_norm(spec: common_spec.LayerNormSpec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _set_inputs(spec: transformer_spec.TransformerEncoderSpec | transformer_spec.TransformerDecoderSpec,
                embedding_weight: np.ndarray, positions: np.ndarray) -> None:
    """Token embedding times sqrt(D) plus our own sinusoidal table.

    CTranslate2's built-in table puts all sines before all cosines and starts at position 1;
    ours interleaves them and starts at 0, and CTranslate2 indexes a given table from 0.
    """
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = embedding_weight
    spec.scale_embeddings = True
    spec.position_encodings.encodings = positions


def _set_self_attention(spec: attention_spec.MultiHeadAttentionSpec, attention: SelfAttention) -> None:
    """linear[0] is the fused q|k|v projection, like our `qkv`; linear[1] the output projection."""
    _set_linear(spec.linear[0], attention.qkv)
    _set_linear(spec.linear[1], attention.out)


def _set_cross_attention(spec: attention_spec.MultiHeadAttentionSpec, attention: CrossAttention) -> None:
    """linear[0] is q, linear[1] the fused k|v projection of the memory, like our `kv`; linear[2] the output."""
    _set_linear(spec.linear[0], attention.q)
    _set_linear(spec.linear[1], attention.kv)
    _set_linear(spec.linear[2], attention.out)


def _set_ffn(spec: transformer_spec.FeedForwardSpec, ffn: FeedForward, norm: torch.nn.LayerNorm) -> None:
    _set_norm(spec.layer_norm, norm)
    _set_linear(spec.linear_0, ffn.up)
    _set_linear(spec.linear_1, ffn.down)


def _vocabulary(config: ModelConfig) -> list[str]:
    """Synthetic token strings: the id itself, except CTranslate2's names for our special ids."""
    tokens = [str(i) for i in range(config.vocab_size)]
    for token_id, token in ((config.pad_id, PAD_TOKEN), (config.unk_id, UNK_TOKEN),
                            (config.bos_id, BOS_TOKEN), (config.eos_id, EOS_TOKEN)):
        tokens[token_id] = token
    return tokens


@torch.no_grad()
def build_ctranslate2_model(model: Transformer, out_dir: Path, *, quantization: str | None = None) -> Path:
    """Write `model` as a CTranslate2 model directory (model.bin, config.json, vocabulary) and return it.

    quantization: CTranslate2's weight type (e.g. "int8", "float16"); None keeps float32.
    Pre-norm and post-norm models both map onto CTranslate2's Transformer spec.
    """
    config = model.config
    spec = transformer_spec.TransformerSpec.from_config(
        (config.encoder_layers, config.decoder_layers),
        config.heads,
        pre_norm=config.norm_first,
        activation=common_spec.Activation.RELU,
    )
    source_weight = _array(model.source_embedding.tokens.weight)
    target_weight = _array(model.target_embedding.tokens.weight)
    positions = _array(model.source_embedding.positions)

    encoder = spec.encoder
    _set_inputs(encoder, source_weight, positions)
    for layer_spec, layer in zip(encoder.layer, model.encoder_layers):
        _set_self_attention(layer_spec.self_attention, layer.attention)
        _set_norm(layer_spec.self_attention.layer_norm, layer.attention_residual.norm)
        _set_ffn(layer_spec.ffn, layer.ffn, layer.ffn_residual.norm)
    if config.norm_first:
        _set_norm(encoder.layer_norm, model.encoder_norm)

    decoder = spec.decoder
    _set_inputs(decoder, target_weight, positions)
    for layer_spec, layer in zip(decoder.layer, model.decoder_layers):
        _set_self_attention(layer_spec.self_attention, layer.self_attention)
        _set_norm(layer_spec.self_attention.layer_norm, layer.self_residual.norm)
        _set_cross_attention(layer_spec.attention, layer.cross_attention)
        _set_norm(layer_spec.attention.layer_norm, layer.cross_residual.norm)
        _set_ffn(layer_spec.ffn, layer.ffn, layer.ffn_residual.norm)
    if config.norm_first:
        _set_norm(decoder.layer_norm, model.decoder_norm)
    # Tied embeddings: the output projection is the target embedding matrix, without bias.
    # CTranslate2 stores identical matrices once (the spec's optimize() aliases them).
    decoder.projection.weight = target_weight if model.output is None else _array(model.output.weight)

    tokens = _vocabulary(config)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    spec.config.layer_norm_epsilon = model.encoder_layers[0].attention_residual.norm.eps
    spec.config.add_attribute(POSITIONS_KEY, config.max_positions)
    spec.validate()
    spec.optimize(quantization=quantization)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec.save(str(out_dir))
    return out_dir


def write_vmap(shortlist: Shortlist, model_dir: Path) -> None:
    """Our vocabulary shortlist (server/runtime/shortlist.py) as the model's vmap.txt, which
    CTranslate2 reads from its model directory: one line per source token with its candidates
    (itself among them: our lists hold a sentence's own tokens), and the tokens every sentence
    may produce on the line with an empty source. CTranslate2 restricts a whole batch to the
    union of its sentences' candidates (ours restricts each row to its own sentence's list)."""
    tokens = json.loads((model_dir / VOCABULARY_FILE).read_text(encoding="utf-8"))
    lines = ["\t" + " ".join(tokens[i] for i in shortlist.always)]
    for source in range(shortlist.vocab_size):
        candidates = shortlist.targets[shortlist.offsets[source]: shortlist.offsets[source + 1]]
        lines.append(tokens[source] + "\t" + " ".join(tokens[i] for i in [*candidates, source]))
    (model_dir / "vmap.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


class CTranslate2Engine:
    """A CTranslate2 Translator on CPU that takes and returns our token ids."""

    def __init__(self, model_dir: Path, *, compute_type: str = "float32", intra_threads: int = 2,
                 inter_threads: int = 1, use_vmap: bool = False) -> None:
        self.use_vmap = use_vmap  # restrict the output vocabulary by the model's vmap.txt (write_vmap)
        self.translator = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                                 intra_threads=intra_threads, inter_threads=inter_threads)
        self.tokens: list[str] = json.loads((model_dir / VOCABULARY_FILE).read_text(encoding="utf-8"))
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.max_positions: int = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))[POSITIONS_KEY]

    def translate_ids(self, source_ids: list[list[int]], *, beam_size: int, min_length: int, max_length: int,
                      batch_size: int) -> list[list[int]]:
        """Best hypothesis per sentence, EOS excluded; sources are EOS-terminated, unpadded ids.

        Same rules as our decoders: at most max_length tokens (EOS included), capped like
        DecodeOptions.target_limit so that BOS plus the output fit max_positions; EOS not before
        min_length tokens; PAD and BOS never generated (suppressed, since CTranslate2 would
        otherwise emit them). UNK stays allowed, as in our decoders.
        """
        limit = max(1, min(max_length, self.max_positions - 1))
        results = self.translator.translate_batch(
            [[self.tokens[i] for i in ids] for ids in source_ids],
            max_batch_size=batch_size,
            beam_size=beam_size,
            num_hypotheses=1,
            min_decoding_length=min(min_length, limit),
            max_decoding_length=limit,
            max_input_length=0,  # no truncation: our sources always fit max_positions
            suppress_sequences=[[PAD_TOKEN], [BOS_TOKEN]],
            return_end_token=False,
            use_vmap=self.use_vmap,
        )
        return [[self.ids[token] for token in result.hypotheses[0]] for result in results]


@torch.no_grad()
def _boost_special_tokens(model: Transformer) -> None:
    """Give PAD, BOS and EOS large embedding rows, so that the random model often picks them.

    Without this it hardly ever ends a sentence early nor tries PAD or BOS, and the check would
    not cover EOS stopping, min_length or the PAD/BOS suppression. The seed and scale were picked
    so that both pre- and post-norm outputs end at varied lengths; the printed lengths show it.
    """
    config = model.config
    weight = model.target_embedding.tokens.weight
    generator = torch.Generator().manual_seed(7)
    for token_id in (config.pad_id, config.bos_id, config.eos_id):
        weight[token_id] = torch.randn(config.d_model, generator=generator) * 3.5 * config.d_model**-0.5


def _self_check() -> None:
    """CTranslate2 greedy == the PyTorch reference greedy, token for token, pre- and post-norm."""
    import tempfile

    from model.batching import pad
    from model.decoding import translate_ids
    from model.search import DecodeOptions
    from tests.builders import make_model

    torch.set_num_threads(1)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    vocab = 500
    sources = [rng.integers(4, vocab, size=int(n) - 1).tolist() + [EOS_ID] for n in rng.integers(2, 40, size=32)]
    runs = {"free (min 0, max 40)": (0, 40), "min 6, max 40": (6, 40), "fixed length (min 12 = max 12)": (12, 12),
            "past max_positions (min 100 = max 100, both cap at 63)": (100, 100)}
    failures = 0
    for norm_first in (True, False):
        model = make_model(vocab_size=vocab, d_model=64, heads=4, ffn=128, encoder_layers=2, decoder_layers=2,
                           max_positions=64, dropout=0.0, norm_first=norm_first)
        _boost_special_tokens(model)
        src = pad(sources)
        with tempfile.TemporaryDirectory() as tmp:
            engine = CTranslate2Engine(build_ctranslate2_model(model, Path(tmp) / "ct2"), intra_threads=1)
            for name, (min_length, max_length) in runs.items():
                options = DecodeOptions(beam_size=1, min_length=min_length, max_length=max_length)
                expected = [hyps[0].tokens for hyps in translate_ids(model, src, options)]
                got = engine.translate_ids(sources, beam_size=1, min_length=min_length, max_length=max_length,
                                           batch_size=8)
                same = sum(e == g for e, g in zip(expected, got))
                tokens = sum(len(e) for e in expected)
                same_tokens = sum(a == b for e, g in zip(expected, got) for a, b in zip(e, g))
                lengths = sorted({len(e) for e in expected})
                ended_by_eos = sum(len(e) < options.target_limit(len(s), model.config.max_positions)
                                   for e, s in zip(expected, sources))
                failures += same != len(sources)
                print(f"{'pre-norm' if norm_first else 'post-norm'}, {name}: {same}/{len(sources)} sentences "
                      f"identical, {same_tokens}/{tokens} reference tokens matched "
                      f"(reference: {ended_by_eos} ended by EOS, lengths {lengths[0]}..{lengths[-1]}, "
                      f"{len(lengths)} distinct)")
    print(f"{'OK' if failures == 0 else f'FAILED ({failures} runs differ)'} in {time.perf_counter() - started:.1f}s")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    _self_check()
