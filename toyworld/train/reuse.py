"""`--reuse`: start a trainer from another toy pipeline's frozen VAE, CLIP tokenizer and first encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from toyworld.train.loop import add_run_arguments

SD3_FOLDER = Path("assets/toy-sd3")


def add_reuse_arguments(parser: argparse.ArgumentParser, archs: dict, minutes: float, threads: int) -> None:
    """The options of a trainer that reuses a toy pipeline (--reuse plus every trainer's options)."""
    add_run_arguments(parser, archs)
    parser.add_argument(
        "--reuse", type=Path, default=SD3_FOLDER, help="toy SD3 pipeline to take the VAE etc. from"
    )
    parser.set_defaults(minutes=minutes, threads=threads, lr=6e-4, pool=16000, save_every=8.0)


def load_vae(folder: Path):
    """The toy pipeline's trained autoencoder (frozen)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, subfolder="vae").eval().requires_grad_(False)


def load_clip(folder: Path):
    """The toy pipeline's CLIP tokenizer and its first text encoder as a CLIPTextModel (pooled output)."""
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the unused text_projection weights
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    logging.set_verbosity(verbosity)
    encoder.config.architectures = ["CLIPTextModel"]
    return tokenizer, encoder


def reused_text_and_pool(folder: Path) -> dict:
    """The training.json `reused` entries for the text encoder and the latent pool."""
    return {
        "text_encoder": (
            f"initialised from {folder}/text_encoder (CLIPTextModelWithProjection weights without the "
            "projection), then trained jointly"
        ),
        "latent_pool": "toyworld.train.loop.encode_pool (same scenes as the SD3 run for the same seed)",
    }
