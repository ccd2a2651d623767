"""The SD1.5-architecture toy trainer: a two-step run saves a StableDiffusionPipeline that loads and samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SD3 = Path(__file__).resolve().parents[1] / "assets" / "toy-sd3"

pytestmark = pytest.mark.skipif(not (SD3 / "model_index.json").exists(), reason="assets/toy-sd3 not trained")


def test_two_step_run_saves_a_loadable_sd15_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from toyworld.train.sd15 import main

    threads = torch.get_num_threads()
    try:
        main(
            ["--out", str(tmp_path / "m"), "--reuse", str(SD3), "--steps", "2", "--pool", "64", "--batch", "4",
             "--threads", "1", "--log", str(tmp_path / "loss.jsonl")]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path / "m"
    settings = json.loads((folder / "toyworld.json").read_text())
    training = json.loads((folder / "training.json").read_text())
    assert settings["arch"] == "sd15" and settings["height"] == settings["width"] == 64
    assert training["status"] == "complete" and training["denoiser_steps"] == 2
    assert training["command"].startswith("python -m toyworld.train.sd15")
    assert (folder / "tokenizer" / "vocab.json").exists() and (folder / "tokenizer" / "merges.txt").exists()
    assert not list(tmp_path.glob(".m.*")), "temp folders left behind"

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    assert pipe.vae.config.shift_factor is None and pipe.vae.config.scaling_factor > 0
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    cross = [m for name, m in pipe.unet.named_modules() if name.endswith("attn2")]
    assert cross and all(m.heads >= 4 for m in cross)

    image = pipe(
        "a red circle on the left",
        num_inference_steps=2,
        guidance_scale=settings["guidance_scale"],
        height=settings["height"],
        width=settings["width"],
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)
