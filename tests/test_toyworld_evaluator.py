"""The toy-world evaluator: near-perfect on ground-truth renders, falling monotonically as renders degrade."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from toyworld.evaluator import detect, evaluate
from toyworld.scenes import COLORS, canonical_caption, render, sample_scene

SCENES = [
    sample_scene(seed, split="heldout" if seed % 4 == 0 else "train", style_prob=0.3) for seed in range(60)
]
RENDERS = [render(scene, 64) for scene in SCENES]


def _mean(images, scenes, key):
    return float(np.mean([evaluate(image, scene)[key] for image, scene in zip(images, scenes)]))


def _noised(image, sigma, rng):
    array = np.asarray(image) / 255.0 + rng.normal(0.0, sigma, (*image.size[::-1], 3))
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8))


def _assert_decreasing(values, name):
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:])), f"{name} not monotone: {values}"
    assert values[-1] < values[0] - 0.1, f"{name} barely falls: {values}"


def test_ground_truth_renders_score_at_least_99_percent():
    scores = [evaluate(image, scene) for image, scene in zip(RENDERS, SCENES)]
    for key in (
        "score",
        "quality",
        "overall",
        "binding",
        "correct",
        "position",
        "outlined",
        "dark_background",
    ):
        assert np.mean([s[key] for s in scores]) >= 0.99, key


def test_caption_strings_are_accepted():
    scene = sample_scene(5, n_objects=2)
    assert evaluate(render(scene), canonical_caption(scene))["correct"] == 1.0


def test_detections_report_canonical_colors_and_shapes():
    scene = sample_scene(11, n_objects=3)
    found = sorted((d.color, d.shape) for d in detect(render(scene))[0])
    assert found == sorted((o.color, o.shape) for o in scene.objects)


def test_blur_lowers_scores_monotonically():
    overall, sharpness = [], []
    for sigma in (0.0, 0.75, 1.5, 3.0):
        images = [image.filter(ImageFilter.GaussianBlur(sigma)) for image in RENDERS[:30]]
        overall.append(_mean(images, SCENES[:30], "overall"))
        sharpness.append(_mean(images, SCENES[:30], "sharpness"))
    _assert_decreasing(overall, "overall")
    _assert_decreasing(sharpness, "sharpness")


def test_noise_lowers_scores_monotonically():
    overall, quality = [], []
    for sigma in (0.0, 0.03, 0.08, 0.2):
        rng = np.random.default_rng(0)
        images = [_noised(image, sigma, rng) for image in RENDERS[:30]]
        overall.append(_mean(images, SCENES[:30], "overall"))
        quality.append(_mean(images, SCENES[:30], "quality"))
    _assert_decreasing(overall, "overall")
    _assert_decreasing(quality, "quality")


@pytest.mark.parametrize("n_objects", [1, 3])
def test_color_swaps_lower_binding_monotonically(n_objects):
    scenes = [
        s
        for s in (sample_scene(seed, n_objects=n_objects) for seed in range(300))
        if len({o.color for o in s.objects}) == len({o.shape for o in s.objects}) == n_objects
    ][:12]
    binding = []
    for n_changed in range(n_objects + 1):
        values = []
        for scene in scenes:
            colors = [o.color for o in scene.objects]
            unused = [c for c in COLORS if c not in colors]
            # Change n_changed objects' colors: a cyclic swap among them, or a fresh color for a lone object.
            new = colors[:]
            if n_changed == 1:
                new[0] = unused[0]
            elif n_changed > 1:
                new[:n_changed] = colors[1:n_changed] + colors[:1]
            shown = replace(scene, objects=tuple(replace(o, color=c) for o, c in zip(scene.objects, new)))
            values.append(evaluate(render(shown), scene)["binding"])
        binding.append(float(np.mean(values)))
    _assert_decreasing(binding, "binding")
    assert binding[0] >= 0.99 and binding[-1] <= 0.01
