"""Toy-world scenes: determinism, the held-out split, captions that parse back, renders that match the spec."""

import json
import random

import numpy as np
import pytest

from toyworld.scenes import (
    COLORS,
    HELD_OUT_PAIRS,
    SHAPES,
    Scene,
    canonical_caption,
    caption,
    held_out_pairs,
    parse_caption,
    render,
    sample_scene,
    scene_matches_caption,
    vocabulary,
)


def test_sample_scene_is_deterministic_and_json_round_trips():
    a, b = sample_scene(7), sample_scene(7)
    assert a == b
    assert Scene.from_dict(json.loads(a.to_json())) == a
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))


def test_held_out_pairs_one_per_shape_and_deterministic():
    pairs = held_out_pairs(3)
    assert pairs == held_out_pairs(3)
    assert sorted(shape for _, shape in pairs) == sorted(SHAPES)
    assert len({color for color, _ in pairs}) == len(SHAPES)


def test_train_split_never_contains_held_out_pairs_and_heldout_split_always_does():
    for seed in range(300):
        train = {(o.color, o.shape) for o in sample_scene(seed, "train").objects}
        heldout = {(o.color, o.shape) for o in sample_scene(seed, "heldout").objects}
        assert not train & HELD_OUT_PAIRS
        assert heldout & HELD_OUT_PAIRS


def test_sample_scene_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        sample_scene(0, split="test")


def test_captions_parse_back_to_the_scene():
    rng = random.Random(0)
    for seed in range(500):
        scene = sample_scene(seed, style_prob=0.3)
        for text in (caption(scene, rng), canonical_caption(scene)):
            assert scene_matches_caption(scene, parse_caption(text)), text


def test_captions_vary_in_wording():
    scene = sample_scene(1, n_objects=2)
    assert len({caption(scene, seed) for seed in range(50)}) >= 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red circle", [("circle", "red", None)]),
        (
            "a blue square on the left and a yellow triangle on the right",
            [("square", "blue", "left"), ("triangle", "yellow", "right")],
        ),
        (
            "a green circle at the top and a red square at the bottom",
            [("circle", "green", "top"), ("square", "red", "bottom")],
        ),
        (
            "a red circle to the left of a blue square",
            [("circle", "red", "left"), ("square", "blue", "right")],
        ),
        ("a blue square below a red circle", [("square", "blue", "bottom"), ("circle", "red", "top")]),
    ],
)
def test_parse_caption_canonical_forms(text, expected):
    scene = parse_caption(text)
    assert [(o.shape, o.color, o.position) for o in scene.objects] == expected
    assert not scene.dark and not scene.outlined


def test_parse_caption_style_words():
    scene = parse_caption("an outlined red circle on a dark background")
    assert scene.dark and scene.outlined


def test_parse_caption_error_names_the_caption():
    with pytest.raises(ValueError, match="a cat"):
        parse_caption("a cat")


def test_render_uses_canonical_colors_at_object_centres():
    scene = sample_scene(3, n_objects=1)
    pixels = np.asarray(render(scene, 64))
    obj = scene.objects[0]
    x, y = 0.5 + obj.offset[0], 0.5 + obj.offset[1]
    from toyworld.scenes import POSITIONS

    x, y = POSITIONS[obj.position][0] + obj.offset[0], POSITIONS[obj.position][1] + obj.offset[1]
    if not scene.outlined:
        assert tuple(pixels[int(y * 64), int(x * 64)]) == COLORS[obj.color]
    assert render(scene, 32).size == (32, 32)


def test_vocabulary_covers_every_caption_word():
    words = set(vocabulary())
    for seed in range(200):
        assert set(caption(sample_scene(seed, style_prob=0.5), seed).replace(",", " ,").split()) <= words
