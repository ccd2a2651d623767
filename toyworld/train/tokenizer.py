"""Offline tokenizers for the toy world: a CLIP BPE learned on its vocabulary and a T5 Unigram, each keeping
every toy-world word whole, plus the CLIP token ids diffusers' pipelines feed their text encoders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipelines.tokenizers import learn_merges
from toyworld.scenes import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges (BPE training on `words`) until every word is a single `word</w>` token."""
    chars = list(bytes_to_unicode().values())
    merges = learn_merges(words)
    vocab = [BOS, EOS] + chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    return {token: i for i, token in enumerate(dict.fromkeys(vocab))}, merges


def check_words_whole(tokenizer, name: str) -> None:
    """Raise if `tokenizer` splits any toy-world word into more than one token."""
    for word in vocabulary():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"{name} splits {word!r} into {ids}")


def build_clip_tokenizer(max_length: int):
    """A CLIPTokenizer (real vocab.json/merges.txt files) in which each toy-world word is one token."""
    from transformers import CLIPTokenizer

    vocab, merges = learn_bpe(vocabulary())
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    check_words_whole(tokenizer, "tokenizer")
    return tokenizer


def build_t5_tokenizer():
    """An offline T5 (Unigram) tokenizer in which every toy-world word is one '▁word' piece."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in vocabulary()]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-!?"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    check_words_whole(tokenizer, "T5 tokenizer")
    return tokenizer


def write_bpe_files(folder: Path) -> None:
    """Write the classic vocab.json and merges.txt of the toy-world CLIP BPE beside tokenizer.json."""
    vocab, merges = learn_bpe(vocabulary())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def clip_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids as diffusers' pipelines make them for CLIP: padded to model_max_length, truncated."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
