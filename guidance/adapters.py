"""One question for every family `HeadHunterPipeline` loads: which attention heads does this denoiser have, and how
are they laid out? (`heads_layout`). Front ends (CLI, batch, demo), the head search and the pipelines ask here.

SD3/SD3.5, FLUX.1 and UNets answer with their hand-written layouts (`guidance.layouts`); the newer families
(FLUX.2, Qwen-Image, Z-Image, Chroma, Wan) with the generic adapter's (`guidance.generic`). Layer numbering is the
same either way (see both modules' docstrings).
"""

from __future__ import annotations

import torch

from guidance.generic import FAMILIES, generic_layout
from guidance.layouts import ModelLayout, layout_of

__all__ = ["heads_layout"]


def heads_layout(denoiser: torch.nn.Module) -> ModelLayout:
    """The layout of any supported denoiser; a TypeError naming the class and the supported ones otherwise."""
    try:
        return layout_of(denoiser)
    except TypeError:
        if type(denoiser).__name__ not in FAMILIES:
            raise TypeError(
                f"SoftPAG has no layout for {type(denoiser).__name__}; supported: "
                "UNet2DConditionModel, " + ", ".join(sorted(FAMILIES))
            ) from None
        return generic_layout(denoiser)
