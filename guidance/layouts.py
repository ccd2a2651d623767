"""Model layouts: where each architecture keeps its attention heads, and the layer numbering we use for them.

Layer numbering (the same in head selections, presets, the CLI and the demo):
- SD3 / SD3.5 (`SD3Transformer2DModel`): layer i = `transformer_blocks[i]`; `attn` is the joint [image, text]
  attention, `attn2` SD3.5's image-only attention (only in its dual-attention layers).
- FLUX.1 (`FluxTransformer2DModel`): one global index, the double-stream blocks first
  (`transformer_blocks[0..D-1]`, [text, image]) then the single-stream blocks (`single_transformer_blocks`,
  index D..D+S-1); 0..56 on FLUX.1 (D=19, S=38), as the paper numbers them.
- UNets (SD1.x/2.x, SDXL): layer i = the i-th self-attention (`attn1`) in the order of `unet.attn_processors`
  (down blocks, mid block, up blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

from guidance.processors import SoftPAGFluxAttnProcessor, SoftPAGJointAttnProcessor, SoftPAGSelfAttnProcessor

# Processors SoftPAG may stand in for: the diffusers defaults it reproduces (and itself).
REPLACEABLE = {
    "sd3": ("JointAttnProcessor2_0", "SoftPAGJointAttnProcessor"),
    "flux": ("FluxAttnProcessor", "FluxAttnProcessor2_0", "SoftPAGFluxAttnProcessor"),
    "unet": ("AttnProcessor2_0", "AttnProcessor", "SoftPAGSelfAttnProcessor"),
}


@dataclass(frozen=True)
class AttentionSite:
    """One attention module a selection can address."""

    name: str
    layer: int
    attention: str
    heads: int


@dataclass(frozen=True)
class ModelLayout:
    """An architecture's attention sites, its blocks in layer order and its SoftPAG processor (class, built with
    the module name)."""

    arch: str
    sites: dict[tuple[int, str], AttentionSite]
    blocks: tuple[str, ...]
    processor: type

    @property
    def heads_per_layer(self) -> dict[str, dict[int, int]]:
        """{attention: {layer: number of heads}}, what `HeadSelection.validate` checks against."""
        table: dict[str, dict[int, int]] = {"attn": {}, "attn2": {}}
        for (layer, attention), site in self.sites.items():
            table[attention][layer] = site.heads
        return table

    def heads_of(self, name: str) -> int:
        """Number of heads of the attention module called `name`."""
        return next(site.heads for site in self.sites.values() if site.name == name)

    @property
    def num_layers(self) -> int:
        """Number of layers with a main attention."""
        return len(self.heads_per_layer["attn"])


def layout_of(denoiser: torch.nn.Module) -> ModelLayout:
    """The layout of a denoiser (SD3/SD3.5 or FLUX transformer, or a UNet)."""
    sites: dict[tuple[int, str], AttentionSite] = {}
    if isinstance(denoiser, SD3Transformer2DModel):
        for i, block in enumerate(denoiser.transformer_blocks):
            sites[i, "attn"] = AttentionSite(f"transformer_blocks.{i}.attn", i, "attn", block.attn.heads)
            if getattr(block, "attn2", None) is not None:
                sites[i, "attn2"] = AttentionSite(
                    f"transformer_blocks.{i}.attn2", i, "attn2", block.attn2.heads
                )
        blocks = tuple(f"transformer_blocks.{i}" for i in range(len(denoiser.transformer_blocks)))
        return ModelLayout("sd3", sites, blocks, SoftPAGJointAttnProcessor)
    if isinstance(denoiser, FluxTransformer2DModel):
        blocks = tuple(f"transformer_blocks.{i}" for i in range(len(denoiser.transformer_blocks)))
        blocks += tuple(
            f"single_transformer_blocks.{i}" for i in range(len(denoiser.single_transformer_blocks))
        )
        for i, block in enumerate(blocks):
            heads = denoiser.get_submodule(block).attn.heads
            sites[i, "attn"] = AttentionSite(f"{block}.attn", i, "attn", heads)
        return ModelLayout("flux", sites, blocks, SoftPAGFluxAttnProcessor)
    if isinstance(denoiser, UNet2DConditionModel):
        names = [
            k.removesuffix(".processor") for k in denoiser.attn_processors if k.endswith("attn1.processor")
        ]
        for i, name in enumerate(names):
            sites[i, "attn"] = AttentionSite(name, i, "attn", denoiser.get_submodule(name).heads)
        return ModelLayout("unet", sites, (), SoftPAGSelfAttnProcessor)
    raise TypeError(
        f"SoftPAG supports SD3Transformer2DModel, FluxTransformer2DModel and UNet2DConditionModel, "
        f"not {type(denoiser).__name__}"
    )
