"""Model layouts: where each family keeps its attention heads, the layer numbering we use for them, and which
denoiser inputs carry one row per batch item.

Layer numbering (the same in head selections, presets, the CLI and the demo): one global index over the family's
block lists in order (`FAMILIES`), as the paper numbers FLUX.1.
- SD3 / SD3.5 (`SD3Transformer2DModel`): layer i = `transformer_blocks[i]`; `attn` is the joint [image, text]
  attention, `attn2` SD3.5's image-only attention (only in its dual-attention layers).
- FLUX.1 (`FluxTransformer2DModel`), FLUX.2, Chroma: the double-stream blocks first (`transformer_blocks[0..D-1]`,
  [text, image]) then the single-stream blocks (`single_transformer_blocks`, index D..D+S-1); 0..56 on FLUX.1.
- Qwen-Image `transformer_blocks[i]`, Z-Image `layers[i]`, Wan `blocks[i].attn1`.
- UNets (SD1.x/2.x, SDXL): layer i = the i-th self-attention (`attn1`) in the order of `unet.attn_processors`
  (down blocks, mid block, up blocks).

A `ModelLayout` also says how SoftPAG runs there: the processor that perturbs a site (`processor`, built with the
module name), the processor classes it may replace, the batch inputs that grow, and the blocks of the shared
prefix. `guidance.adapters.heads_layout` picks it; `layout_of` here gives the fast paths (the hand-written
processors of `guidance.processors` for SD3/SD3.5, FLUX.1 and UNets).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from guidance.processors import SoftPAGFluxAttnProcessor, SoftPAGJointAttnProcessor, SoftPAGSelfAttnProcessor


@dataclass(frozen=True)
class AttentionSite:
    """One attention module a selection can address."""

    name: str
    layer: int
    attention: str
    heads: int


@dataclass(frozen=True)
class BatchInputs:
    """The denoiser inputs that carry one row per batch item.

    rows: the input whose first dimension counts the batch (None: the first input). grown: the inputs that grow
    with the perturbed rows (None: every batch-sized tensor or per-sample list, but `unbatched`). streams: those
    of `grown` that a shared prefix grows at its split block instead (they are also the blocks' keyword names)."""

    rows: str | None = None
    grown: tuple[str, ...] | None = None
    streams: tuple[str, ...] = ()
    unbatched: tuple[str, ...] = ()


# How a site's tokens are ordered, for the "image" identity (the image->image block set to the diagonal):
#   "image-text": [image, text] joint attention (SD3); "text-image": [text, image] (FLUX.1/.2, Chroma, Qwen-Image);
#   "single": the already concatenated [text, image] sequence of a single-stream block (text length from the
#   denoiser's `encoder_hidden_states`); "image": image tokens only (Wan self-attention, SD3.5's attn2);
#   None: unknown per-row order (Z-Image's padded unified sequence): only the "joint" identity.


@dataclass(frozen=True)
class Family:
    """Where a transformer family keeps its heads: [(block list, ((notation, module attribute, token order), ..))]."""

    name: str
    blocks: tuple[tuple[str, tuple[tuple[str, str, str | None], ...]], ...]
    unbatched: tuple[str, ...] = ()  # inputs never grown (e.g. FLUX.1's (tokens, 3) position ids)


_DOUBLE_SINGLE = (
    ("transformer_blocks", (("attn", "attn", "text-image"),)),
    ("single_transformer_blocks", (("attn", "attn", "single"),)),
)

# Transformer class name -> family (a subclass is its base's family). Layer i is the i-th block over the lists.
FAMILIES: dict[str, Family] = {
    "SD3Transformer2DModel": Family(
        "sd3", (("transformer_blocks", (("attn", "attn", "image-text"), ("attn2", "attn2", "image"))),)
    ),
    "FluxTransformer2DModel": Family("flux", _DOUBLE_SINGLE, unbatched=("txt_ids", "img_ids")),
    "Flux2Transformer2DModel": Family("flux2", _DOUBLE_SINGLE),
    "ChromaTransformer2DModel": Family("chroma", _DOUBLE_SINGLE, unbatched=("txt_ids", "img_ids")),
    "QwenImageTransformer2DModel": Family(
        "qwenimage", (("transformer_blocks", (("attn", "attn", "text-image"),)),)
    ),
    "ZImageTransformer2DModel": Family("zimage", (("layers", (("attn", "attention", None),)),)),
    "WanTransformer3DModel": Family("wan", (("blocks", (("attn", "attn1", "image"),)),)),
}
UNET = "UNet2DConditionModel"  # layers are its `attn1` modules in `attn_processors` order


@dataclass(frozen=True)
class ModelLayout:
    """An architecture's attention sites and how SoftPAG runs on them: its SoftPAG processor (built with the module
    name), the processor classes that processor may stand in for, the inputs that grow, the blocks in layer order
    (the shared prefix; empty where it is not supported) and each site's token order."""

    arch: str
    sites: dict[tuple[int, str], AttentionSite]
    blocks: tuple[str, ...]
    processor: Callable[[str], object]
    replaceable: tuple[str, ...] = ()
    inputs: BatchInputs = BatchInputs()
    orders: Mapping[str, str | None] = field(default_factory=dict)

    @functools.cached_property
    def heads_per_layer(self) -> dict[str, dict[int, int]]:
        """{attention: {layer: number of heads}}, what `HeadSelection.validate` checks against."""
        table: dict[str, dict[int, int]] = {"attn": {}, "attn2": {}}
        for (layer, attention), site in self.sites.items():
            table[attention][layer] = site.heads
        return table

    @functools.cached_property
    def heads(self) -> dict[str, int]:
        """{module name: number of heads} of every site."""
        return {site.name: site.heads for site in self.sites.values()}

    def heads_of(self, name: str) -> int:
        """Number of heads of the attention module called `name`."""
        return self.heads[name]

    @property
    def num_layers(self) -> int:
        """Number of layers with a main attention."""
        return len(self.heads_per_layer["attn"])


def family_of(denoiser: torch.nn.Module) -> Family | None:
    """The family of a transformer (by its class or a base class), None for a UNet; TypeError for anything else."""
    names = [cls.__name__ for cls in type(denoiser).__mro__]
    family = next((FAMILIES[n] for n in names if n in FAMILIES), None)
    if family is None and UNET not in names:
        raise TypeError(
            f"SoftPAG has no layout for {type(denoiser).__name__}; supported: {UNET}, "
            + ", ".join(sorted(FAMILIES))
        )
    return family


def attention_sites(denoiser: torch.nn.Module) -> tuple[str, dict, tuple[str, ...], dict[str, str | None]]:
    """(family name, sites by (layer, attention), blocks in layer order, token order by module name)."""
    family = family_of(denoiser)
    sites: dict[tuple[int, str], AttentionSite] = {}
    orders: dict[str, str | None] = {}
    if family is None:  # a UNet
        names = [
            k.removesuffix(".processor") for k in denoiser.attn_processors if k.endswith("attn1.processor")
        ]
        for i, name in enumerate(names):
            sites[i, "attn"] = AttentionSite(name, i, "attn", denoiser.get_submodule(name).heads)
            orders[name] = "image"
        return "unet", sites, (), orders
    blocks: list[str] = []
    for list_name, attentions in family.blocks:
        for i in range(len(getattr(denoiser, list_name))):
            block, layer = f"{list_name}.{i}", len(blocks)
            blocks.append(block)
            for notation, attribute, order in attentions:
                module = getattr(denoiser.get_submodule(block), attribute, None)
                if module is not None:
                    name = f"{block}.{attribute}"
                    sites[layer, notation] = AttentionSite(name, layer, notation, module.heads)
                    orders[name] = order
    return family.name, sites, tuple(blocks), orders


# -- the fast paths: hand-written processors (`guidance.processors`) -------------------------------------------


@dataclass(frozen=True)
class FastPath:
    """A family's hand-written SoftPAG processor, the diffusers processors it reproduces, its batch inputs and
    whether the blocks before the first perturbed layer may run once for cond and perturbed rows."""

    processor: type
    replaceable: tuple[str, ...]
    inputs: BatchInputs
    shared_prefix: bool


_STREAMS = ("hidden_states", "encoder_hidden_states")
FAST_PATHS: dict[str, FastPath] = {
    "sd3": FastPath(
        SoftPAGJointAttnProcessor,
        ("JointAttnProcessor2_0", "SoftPAGJointAttnProcessor"),
        BatchInputs("hidden_states", ("timestep", "pooled_projections", *_STREAMS), _STREAMS),
        shared_prefix=True,
    ),
    "flux": FastPath(
        SoftPAGFluxAttnProcessor,
        ("FluxAttnProcessor", "FluxAttnProcessor2_0", "SoftPAGFluxAttnProcessor"),
        BatchInputs("hidden_states", ("timestep", "pooled_projections", "guidance", *_STREAMS), _STREAMS),
        shared_prefix=True,
    ),
    "unet": FastPath(
        SoftPAGSelfAttnProcessor,
        ("AttnProcessor2_0", "AttnProcessor", "SoftPAGSelfAttnProcessor"),
        BatchInputs(
            "sample",
            (
                "sample",
                "timestep",
                "encoder_hidden_states",
                "timestep_cond",
                "added_cond_kwargs",
                "class_labels",
            ),
        ),
        shared_prefix=False,
    ),
}


def layout_of(denoiser: torch.nn.Module) -> ModelLayout:
    """The fast-path layout of a denoiser (SD3/SD3.5 or FLUX.1 transformer, or a UNet); TypeError for the others
    (`guidance.adapters.heads_layout` answers for every family)."""
    arch, sites, blocks, orders = attention_sites(denoiser)
    fast = FAST_PATHS.get(arch)
    if fast is None:
        raise TypeError(
            f"SoftPAG's hand-written processors support SD3Transformer2DModel, FluxTransformer2DModel and "
            f"{UNET}, not {type(denoiser).__name__} (guidance.adapters.heads_layout covers every family)"
        )
    blocks = blocks if fast.shared_prefix else ()
    return ModelLayout(arch, sites, blocks, fast.processor, fast.replaceable, fast.inputs, orders)
