"""pipelines.settings: the sampling settings a model folder records, as call arguments."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.settings import ASSETS, recommended_call, recommended_settings

FLUX = ASSETS / "toy-flux"


def test_a_folder_without_settings_gets_the_defaults(tmp_path):
    assert recommended_settings(tmp_path) == {}
    assert recommended_call(tmp_path, steps=7, guidance_scale=2.0) == {
        "num_inference_steps": 7,
        "guidance_scale": 2.0,
    }


def test_recorded_settings_become_call_arguments(tmp_path):
    (tmp_path / "toyworld.json").write_text(json.dumps({
        "height": 48, "width": 32, "num_inference_steps": 9, "guidance_scale": 4.0, "true_cfg_scale": 2.5,
        "max_sequence_length": 12, "note": "not a call argument"}))  # fmt: skip
    assert recommended_call(tmp_path) == {
        "num_inference_steps": 9, "guidance_scale": 4.0, "height": 48, "width": 32, "max_sequence_length": 12,
        "true_cfg_scale": 2.5, "negative_prompt": ""}  # fmt: skip


@pytest.mark.skipif(not (FLUX / "model_index.json").exists(), reason="assets/toy-flux not present")
def test_the_toy_flux_called_with_its_recommended_call_samples_at_its_trained_size():
    """FluxPipeline's default size is 1024 px: without the recorded 64 px a 64-px model draws noise, slowly."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(FLUX)
    pipe.set_progress_bar_config(disable=True)
    call = dict(recommended_call(FLUX), num_inference_steps=1)
    image = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).images[0]
    settings = json.loads((FLUX / "toyworld.json").read_text())
    assert image.size == (settings["width"], settings["height"]) == (64, 64)
