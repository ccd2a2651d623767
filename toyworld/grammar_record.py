"""Record the toy world's caption grammar in a toy model's folder (toyworld.json, key "grammar").

The tools (CLI, batch, demo) never import the toy world (layering: tests/test_architecture.py), yet they should tell
a user which words and prompts a toy model was trained on. So the grammar its captions came from is written into
the model folder, where `pipelines.settings.model_vocabulary` reads it: the colours, shapes, sizes, position and
relation phrases, background and style words, the prompt templates, every word, the colour-shape pairs held out
of training (`held_out_pairs_seed`), and example prompts that the grammar generates (held-in pairs only).

    python -m toyworld.grammar_record assets/toy-sd3 assets/toy-sd3-deep assets/toy-flux assets/toy-sd15
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from toyworld.scenes import (
    COLORS,
    DARK_PHRASES,
    LIGHT_PHRASES,
    POSITION_PHRASES,
    PREFIXES,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    Scene,
    canonical_caption,
    held_out_pairs,
    parse_caption,
    scene_matches_caption,
    vocabulary,
)

SETTINGS_FILE = "toyworld.json"
# How a caption is built (toyworld.scenes.caption): {object} is an object's noun phrase, {position} one of its
# position phrases, {relation} a relation phrase, {background} a background phrase; [ ] optional.
TEMPLATES = (
    "[{prefix}] {object} [{position}] [{background}]",
    "[{prefix}] {object} {position} and {object} {position} [{background}]",
    "[{prefix}] {object} {relation} {object} [{background}]",
    "[{prefix}] {object} {position}, {object} {position}, and {object} {position} [{background}]",
)
OBJECT_TEMPLATE = "a|an [outlined] [small|large] {color} {shape}"


def _examples(held_out: frozenset[tuple[str, str]]) -> list[str]:
    """Prompts of each template that the grammar generates, from colour-shape pairs seen in training only: one
    object, two objects by position and by relation, a dark background, outlined shapes, three in a row."""
    pairs = sorted((c, s) for c in COLORS for s in SHAPES if (c, s) not in held_out)
    random.Random(0).shuffle(pairs)
    a, b, c, d, e, f, g, h, i = _distinct(pairs, 9)
    two = Scene((ObjectSpec(b[1], b[0], "left"), ObjectSpec(c[1], c[0], "right")), layout="pair")
    relation = next(r for r, positions in RELATIONS.items() if positions == ("left", "right"))
    row = tuple(ObjectSpec(s, c, p, "small") for (c, s), p in zip((g, h, i), ("left", "center", "right")))
    made = [
        (None, Scene((ObjectSpec(a[1], a[0], "center"),))),
        (None, two),
        (f"a {b[0]} {b[1]} {relation} a {c[0]} {c[1]}", two),
        (
            None,
            Scene((ObjectSpec(d[1], d[0], "top"), ObjectSpec(e[1], e[0], "bottom")), "dark", layout="pair"),
        ),
        (None, Scene((ObjectSpec(f[1], f[0], "left", "large"),), outlined=True)),
        (None, Scene(row, layout="row")),
    ]
    examples = [text or canonical_caption(scene) for text, scene in made]
    for text, (_, scene) in zip(examples, made, strict=True):
        assert scene_matches_caption(scene, parse_caption(text)), text  # the grammar reads its own examples
    return examples


def _distinct(pairs: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """`count` colour-shape pairs in order, each of another colour and shape than the one before it (so that the
    objects of one example differ in both)."""
    chosen, left = [], list(pairs)
    while len(chosen) < count:
        fits = [p for p in left if not chosen or (p[0] != chosen[-1][0] and p[1] != chosen[-1][1])]
        chosen.append((fits or left)[0])
        left.remove(chosen[-1])
    return chosen


def words() -> list[str]:
    """Every word (and ',') of the captions the grammar writes: its phrases' words, the object words, articles."""
    found = set(COLORS) | set(SHAPES) | {"small", "large", "outlined", "a", "an", "and", ","}
    phrases = [p for ps in POSITION_PHRASES.values() for p in ps] + [*RELATIONS, *PREFIXES, *DARK_PHRASES]
    for phrase in [*phrases, *LIGHT_PHRASES.values()]:
        found |= set(phrase.split())
    assert found <= set(vocabulary())  # the tokenizers' words ("medium" is one that no caption uses)
    return sorted(found)


def grammar(held_out_seed: int = 0) -> dict:
    """The caption grammar of `toyworld.scenes` as JSON: what a toy model trained on its captions knows."""
    held_out = held_out_pairs(held_out_seed)
    return {
        "source": "toyworld.scenes (recorded by toyworld/grammar_record.py)",
        "colors": sorted(COLORS),
        "shapes": list(SHAPES),
        "sizes": ["small", "large"],
        "styles": ["outlined"],
        "positions": {position: list(phrases) for position, phrases in POSITION_PHRASES.items()},
        "relations": list(RELATIONS),
        "prefixes": [p.strip() for p in dict.fromkeys(PREFIXES) if p.strip()],
        "backgrounds": [*DARK_PHRASES, *LIGHT_PHRASES.values()],
        "object": OBJECT_TEMPLATE,
        "templates": list(TEMPLATES),
        "max_objects": 3,
        "words": words(),
        "held_out_pairs": [list(pair) for pair in sorted(held_out)],
        "held_out_seed": held_out_seed,
        "examples": _examples(held_out),
    }


def record(folder: str | Path) -> dict:
    """Write the grammar into `folder`/toyworld.json (its other keys kept); returns it."""
    path = Path(folder) / SETTINGS_FILE
    settings = json.loads(path.read_text())
    settings["grammar"] = grammar(int(settings.get("held_out_pairs_seed", 0)))
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return settings["grammar"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="toy model folders (each with a toyworld.json)")
    for folder in parser.parse_args(argv).folders:
        written = record(folder)
        print(f"{folder}: {len(written['words'])} words, {len(written['examples'])} examples")


if __name__ == "__main__":
    main()
