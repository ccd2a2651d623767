"""Fast checks of the trained toy FLUX pipeline in assets/toy-flux (skipped when the folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FOLDER = Path(__file__).resolve().parents[1] / "assets" / "toy-flux"

pytestmark = pytest.mark.skipif(
    not (FOLDER / "model_index.json").exists(), reason="assets/toy-flux not trained"
)


@pytest.fixture(scope="module")
def pipe():
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(FOLDER)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def settings():
    return json.loads((FOLDER / "toyworld.json").read_text())


def test_settings_and_training_record(settings):
    for key in (
        "arch",
        "height",
        "width",
        "num_inference_steps",
        "guidance_scale",
        "true_cfg_scale",
        "max_sequence_length",
    ):
        assert key in settings
    assert settings["arch"] == "flux"
    training = json.loads((FOLDER / "training.json").read_text())
    assert training["command"].startswith(("python -m toyworld.train_flux", "python -m toyworld.train.flux"))
    assert training["denoiser_steps"] > 0
    assert "vae" in training["reused"]


def test_config_matches_record(pipe, settings):
    training = json.loads((FOLDER / "training.json").read_text())
    recorded = training["config"]["transformer"]
    config = pipe.transformer.config
    for key in (
        "num_layers",
        "num_single_layers",
        "num_attention_heads",
        "attention_head_dim",
        "guidance_embeds",
    ):
        assert config[key] == recorded[key], key
    assert tuple(config["axes_dims_rope"]) == tuple(recorded["axes_dims_rope"])
    assert config["in_channels"] == 4 * pipe.vae.config.latent_channels
    assert config["joint_attention_dim"] == pipe.text_encoder_2.config.d_model
    assert config["pooled_projection_dim"] == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.use_dynamic_shifting
    assert settings["height"] % (pipe.vae_scale_factor * 2) == 0


def test_tokenizers_keep_words_whole(pipe):
    from toyworld.scenes import vocabulary

    for word in vocabulary():
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word
        assert len(pipe.tokenizer_2(word, add_special_tokens=False).input_ids) == 1, word


def test_generates_with_true_cfg(pipe, settings):
    image = pipe(
        "a red circle",
        negative_prompt="",
        true_cfg_scale=settings["true_cfg_scale"],
        num_inference_steps=2,
        height=settings["height"],
        width=settings["width"],
        max_sequence_length=settings["max_sequence_length"],
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (settings["width"], settings["height"])
