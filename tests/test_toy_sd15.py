"""The shipped toy SD1.5 model: loads offline with diffusers and with our pipelines, and structured attention on it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

MODEL = Path(__file__).resolve().parents[1] / "assets" / "toy-sd15"
PROMPT = "a red circle on the left and a blue square on the right"

pytestmark = pytest.mark.skipif(
    not (MODEL / "model_index.json").exists(), reason="assets/toy-sd15 not trained"
)


@pytest.fixture(scope="module")
def plain():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen():
    return torch.Generator().manual_seed(0)


def test_loads_offline_and_defaults_to_its_training_resolution(plain):
    settings = json.loads((MODEL / "toyworld.json").read_text())
    image = plain(PROMPT, num_inference_steps=2, generator=_gen()).images[0]
    assert image.size == (settings["width"], settings["height"]) == (64, 64)
    assert plain.safety_checker is None


def test_structured_off_equals_diffusers_and_key_value_changes_the_image(plain):
    from pipelines.headhunter import StructuredDiffusionPipeline

    pipe = StructuredDiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "HeadHunterSDPipeline"
    call = dict(num_inference_steps=4, guidance_scale=5.0, output_type="np")
    reference = plain(PROMPT, generator=_gen(), **call).images
    off = pipe(PROMPT, generator=_gen(), **call).images
    np.testing.assert_array_equal(off, reference)
    key_value = pipe(PROMPT, generator=_gen(), structured="key-value", **call).images
    assert key_value.shape == reference.shape
    assert np.abs(key_value - reference).max() > 1e-3  # two multi-word phrases: the values really are mixed
