"""Tokenizers built from in-memory vocabularies (no download): the toy models ship them, the tiny test pipelines
use them, and `UpFusionPipeline`'s from-scratch configs build their CLIP tokenizer with them."""

from __future__ import annotations

import string
from collections.abc import Iterable

from transformers import CLIPTokenizer, T5Tokenizer

BASE_WORDS = (
    "a an the and with of on in to at left right top bottom center middle above below beside next "
    "red green blue yellow orange purple white black gray dark light bright "
    "circle square triangle cat dog car hat house tree photo picture painting of style golden hour "
    "high detail shadow spring bloom glossy background outlined striped small large big"
).split()

CHARS = string.ascii_lowercase + string.digits + string.punctuation


def clip_tokenizer(words: Iterable[str] = BASE_WORDS, model_max_length: int = 77) -> CLIPTokenizer:
    """A byte-pair CLIP tokenizer in which each listed word is one token; other words split into characters.

    The merges come from BPE training on the word list (the most frequent adjacent pair first, ties broken by the
    pair itself, until every word is one token), so applying them in rank order rebuilds every listed word, and
    the same words always give the same ids (the `tokenizers` trainer breaks ties differently from run to run,
    which made tiny pipelines differ between processes)."""
    merges = learn_merges(dict.fromkeys(w.lower() for w in words if w))
    tokens = ["<|startoftext|>", "<|endoftext|>", *CHARS, *(ch + "</w>" for ch in CHARS)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*tokens, *(a + b for a, b in merges)]))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges learned on `words` (the most frequent adjacent pair first, ties broken by the pair itself) until
    every word is one `word</w>` token; deterministic."""
    segments = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(seg) > 1 for seg in segments.values()):
        counts: dict[tuple[str, str], int] = {}
        for seg in segments.values():
            for pair in zip(seg, seg[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        segments = {w: _merged(seg, best) for w, seg in segments.items()}
    return merges


def _merged(segment: list[str], pair: tuple[str, str]) -> list[str]:
    """`segment` with every adjacent occurrence of `pair` joined, left to right."""
    out, i = [], 0
    while i < len(segment):
        if i + 1 < len(segment) and (segment[i], segment[i + 1]) == pair:
            out.append(segment[i] + segment[i + 1])
            i += 2
        else:
            out.append(segment[i])
            i += 1
    return out


def t5_tokenizer(words: Iterable[str] = BASE_WORDS, model_max_length: int = 64) -> T5Tokenizer:
    """A unigram T5 tokenizer in which each listed word is one piece; other words split into characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w.lower(), -1.0) for w in dict.fromkeys(words)]
    pieces += [("\u2581", -5.0)] + [(ch, -10.0) for ch in CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
