"""One question for every family `HeadHunterPipeline` loads: which attention heads does this denoiser have, how are
they laid out, and how does SoftPAG run on them? (`heads_layout`). Front ends (CLI, batch, demo), the head search,
the pipelines and the guider ask here.

The answer is one `guidance.layouts.ModelLayout`: sites and layer numbering from `guidance.layouts` (one table for
every family), and the processor that perturbs a site. SD3/SD3.5, FLUX.1 and UNets have fast paths, hand-written
processors (`guidance.processors`) that also let the blocks before the first perturbed layer run once for cond and
perturbed rows; the other families (FLUX.2, Qwen-Image, Z-Image, Chroma, Wan) get the generic interceptor
(`guidance.generic`), which perturbs the model's own attention call. Both give the same numbers within float
rounding (tests/test_families.py); the fast paths are faster (benchmarks/softpag_speed.py).
"""

from __future__ import annotations

import torch

from guidance.generic import generic_layout
from guidance.layouts import FAST_PATHS, ModelLayout, family_of, layout_of

__all__ = ["heads_layout"]


def heads_layout(denoiser: torch.nn.Module, generic: bool = False) -> ModelLayout:
    """The layout of any supported denoiser; a TypeError naming the class and the supported ones otherwise.

    generic: the generic interceptor even where a fast path exists (equivalence tests, the speed benchmark)."""
    family = family_of(denoiser)
    arch = "unet" if family is None else family.name
    if arch in FAST_PATHS and not generic:
        return layout_of(denoiser)
    return generic_layout(denoiser)
