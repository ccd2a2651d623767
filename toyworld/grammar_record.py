"""Record the toy world's caption grammar in a toy model's folder (toyworld.json, key "grammar").

The tools (CLI, batch, demo) never import the toy world (layering: tests/test_architecture.py), yet they should tell
a user which words and prompts a toy model was trained on. So the grammar its captions came from is written into
the model folder, where `tools.settings.model_vocabulary` reads it: the colours, shapes, sizes, position and
relation phrases, background and style words, the prompt templates, every word, the colour-shape pairs held out
of training (`held_out_pairs_seed`), and example prompts of each kind that the grammar writes (held-in pairs only),
the one the model draws best of four candidates, measured on it with the model-free evaluator.

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


EXAMPLE_KINDS = ("one object", "two by position", "two by relation", "two by top and bottom", "dark background",
                 "outlined", "three in a row")  # fmt: skip
WORKS = 0.5  # an example is shown if the model draws it fully correct on at least this share of the seeds


def candidates(held_out: frozenset[tuple[str, str]], per_kind: int = 6) -> dict[str, list[str]]:
    """Prompts the grammar writes, `per_kind` of each kind (`EXAMPLE_KINDS`), from colour-shape pairs seen in
    training only, the objects of one prompt differing in colour and shape; each checked to be read back by the
    toy world's caption parser as the scene it was written from."""
    pairs = sorted((c, s) for c in COLORS for s in SHAPES if (c, s) not in held_out)
    rng = random.Random(0)
    relation = next(r for r, positions in RELATIONS.items() if positions == ("left", "right"))
    found: dict[str, list[str]] = {kind: [] for kind in EXAMPLE_KINDS}
    for _ in range(per_kind):
        rng.shuffle(pairs)
        a, b, c, d, e, f, g, h, i = _distinct(pairs, 9)
        two = Scene((ObjectSpec(b[1], b[0], "left"), ObjectSpec(c[1], c[0], "right")), layout="pair")
        row = tuple(ObjectSpec(s, c, p, "small") for (c, s), p in zip((g, h, i), ("left", "center", "right")))
        made = {
            "one object": (None, Scene((ObjectSpec(a[1], a[0], "center"),))),
            "two by position": (None, two),
            "two by relation": (f"a {b[0]} {b[1]} {relation} a {c[0]} {c[1]}", two),
            "dark background": (None, Scene((ObjectSpec(d[1], d[0], "left"),), "dark")),
            "two by top and bottom": (None, Scene((ObjectSpec(d[1], d[0], "top"), ObjectSpec(e[1], e[0], "bottom")),
                                                  layout="pair")),
            "outlined": (None, Scene((ObjectSpec(f[1], f[0], "left", "large"),), outlined=True)),
            "three in a row": (None, Scene(row, layout="row")),
        }  # fmt: skip
        for kind, (text, scene) in made.items():
            text = text or canonical_caption(scene)
            assert scene_matches_caption(scene, parse_caption(text)), text  # the grammar reads its own prompt
            if text not in found[kind]:
                found[kind].append(text)
    return found


def measure(model: str | Path, prompts: list[str], seeds: int = 4) -> dict[str, dict]:
    """How a toy model draws each prompt: the share of fully correct images and the mean binding over seeds
    0..seeds-1 at the model's recommended call, scored by the model-free evaluator."""
    import torch

    from pipelines.headhunter import HeadHunterPipeline
    from tools.settings import recommended_call
    from toyworld.evaluator import evaluate

    pipe = HeadHunterPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    call = recommended_call(model)
    negative = json.loads((Path(model) / SETTINGS_FILE).read_text()).get(
        "negative_prompt", call.get("negative_prompt")
    )
    if (
        negative is not None
    ):  # one per prompt of the batch (a single string with a list of prompts is refused)
        call["negative_prompt"] = [negative] * seeds
    scores = {}
    for prompt in prompts:
        generators = [torch.Generator().manual_seed(seed) for seed in range(seeds)]
        images = pipe([prompt] * seeds, generator=generators, **call).images
        found = [evaluate(image, prompt) for image in images]
        scores[prompt] = {"correct": sum(f["correct"] for f in found) / seeds,
                          "binding": round(sum(f["binding"] for f in found) / seeds, 4), "seeds": seeds}  # fmt: skip
    return scores


def chosen_examples(model: str | Path, held_out: frozenset[tuple[str, str]]) -> tuple[list[str], dict]:
    """The examples shown for a model: of each kind's candidates, the one it draws best (`measure`: fully
    correct share, then binding), where that one works (fully correct on at least `WORKS` of the seeds; a kind
    the model does not draw is left out); with every candidate's scores."""
    found = candidates(held_out)
    scores = measure(model, [p for texts in found.values() for p in texts])
    best = [
        max(texts, key=lambda p: (scores[p]["correct"], scores[p]["binding"])) for texts in found.values()
    ]
    return [p for p in best if scores[p]["correct"] >= WORKS], scores


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
    """The caption grammar of `toyworld.scenes` as JSON: what a toy model trained on its captions knows (its
    examples: `record`, which measures them on the model)."""
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
    }


def record(folder: str | Path) -> dict:
    """Write the grammar into `folder`/toyworld.json (its other keys kept), with the examples the model draws
    best of each kind and the scores of every candidate; returns the grammar."""
    path = Path(folder) / SETTINGS_FILE
    settings = json.loads(path.read_text())
    recorded = grammar(int(settings.get("held_out_pairs_seed", 0)))
    examples, scores = chosen_examples(folder, held_out_pairs(recorded["held_out_seed"]))
    recorded.update(
        examples=examples,
        example_kinds=list(EXAMPLE_KINDS),
        example_scores=scores,
        examples_note=f"of 6 prompts of each kind that the grammar writes (colour-shape pairs seen in training), the "
        "one this model draws best (share of fully correct images, then mean binding, over seeds 0-3 at its "
        f"recommended call, scored by toyworld.evaluator), where it is fully correct on at least {WORKS:.0%} of "
        "the seeds; example_scores holds every candidate's scores",
    )  # fmt: skip
    settings["grammar"] = recorded
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return recorded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="toy model folders (each with a toyworld.json)")
    for folder in parser.parse_args(argv).folders:
        written = record(folder)
        shown = {p: written["example_scores"][p]["correct"] for p in written["examples"]}
        print(f"{folder}: {len(written['words'])} words; examples (fully correct share): {shown}")


if __name__ == "__main__":
    main()
