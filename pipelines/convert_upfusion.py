"""Convert the official UpFusion checkpoints (upfusion3d/upfusion: `upsrt.pt`, `upfusion2d.pt`) into a diffusers
folder that `UpFusionPipeline.from_pretrained` loads (the latent path, `pipelines.upfusion.CONFIGS["paper"]`).

    from pipelines.convert_upfusion import convert_upfusion
    convert_upfusion("weights/upsrt.pt", "weights/upfusion2d.pt", dinov2="facebook/dinov2-base",
                     sd15="stable-diffusion-v1-5/stable-diffusion-v1-5", out="upfusion-diffusers")

Both files are read with `torch.load(weights_only=True)` (no code runs; a file that needs code to unpickle is
refused) and hold `{"model_state_dict": ...}`, as the official `scripts/run_distillation.py` reads them: `upsrt.pt`
the UpSRT, `upfusion2d.pt` the whole ControlLDM (UNet, ControlNet, VAE, CLIP text model, noise-schedule buffers).
DINOv2 is not in them (the official code takes `dinov2_vitb14` from torch.hub): `dinov2` names the transformers
copy of the same ViT-B/14 weights. `sd15` gives the CLIP tokenizer only.

Every key is mapped by the row tables below (official prefix -> our prefix, and a renaming of the rest by the
row's kind), strictly: an official key no row maps, a mapped key our module lacks, a shape that differs or a key of
ours nothing fills stops the conversion with the key's name. docs/upfusion.md prints the tables (`headhunter convert-upfusion --tables`).
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer, Dinov2Model

from pipelines.upfusion import (
    CONFIGS,
    PAPER_SCHEDULER,
    UpFusionPipeline,
    check_image_encoder,
    paper_components,
)

STATE = "model_state_dict"
UNET, CONTROLNET, VAE, TEXT = (
    "model.diffusion_model",
    "control_model",
    "first_stage_model",
    "cond_stage_model",
)

# ----------------------------------------------------------------------------------------------------------
# Renamings of a row's rest ("kinds"): official sub-prefix -> ours; None keeps the names
# ----------------------------------------------------------------------------------------------------------

LEAF = {"weight": "weight", "bias": "bias"}
KINDS: dict[str, dict[str, str] | None] = {
    "leaf": LEAF,
    # upsrt/model/transformer.py TransformerEncoderBlock / TransformerDecoderBlock (attn_type "xformers")
    "upsrt_block": {"to_q": "attention.to_q", "to_k": "attention.to_k", "to_v": "attention.to_v",
                    "to_out": "attention.to_out.0", "linear1": "ff.net.0.proj", "linear2": "ff.net.2",
                    "norm1": "norm1", "norm2": "norm2"},
    # ldm openaimodel.ResBlock -> diffusers ResnetBlock2D
    "resnet": {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
               "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"},
    # ldm SpatialTransformer -> diffusers Transformer2DModel: the same names
    "transformer": None,
    # the ControlNet's SLTQueryTransformer: the same names; proj_in's last 6 input channels (the query rays)
    # become the SceneRayQueries projection of that transformer
    "slt": None,
    # ldm autoencoder ResnetBlock / AttnBlock -> diffusers ResnetBlock2D / Attention (1x1 convs -> linears)
    "vae_resnet": {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                   "nin_shortcut": "conv_shortcut"},
    "vae_attention": {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
    # transformers CLIPTextModel (4.19 in the official environment) -> CLIPTextModel here: the same names
    "same": None,
}  # fmt: skip

# Official keys read and dropped: the LDM noise schedule (betas and alphas_cumprod are checked against the
# scheduler's; the rest derive from them) and CLIP's position_ids buffer (checked to be 0 .. L-1).
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar",
)  # fmt: skip
POSITION_IDS = f"{TEXT}.transformer.text_model.embeddings.position_ids"

Row = tuple[str, str, str]  # (official prefix, our prefix "component.module", kind)


class ConversionError(ValueError):
    """An official checkpoint that cannot be converted; the message names the file and the key."""


# ----------------------------------------------------------------------------------------------------------
# Row tables, derived from the structure of our modules
# ----------------------------------------------------------------------------------------------------------


def upsrt_rows(config) -> list[Row]:
    """upsrt.pt (upsrt/model/model.py UpSRT) -> PaperUpSRT."""
    rows = [("linear_scene", "upsrt.scene_projection", "leaf"),
            ("linear_query_pixel_rays", "upsrt.ray_projection", "leaf")]  # fmt: skip
    rows += [(f"scene_encoder.transformer_encoder.layers.{i}", f"upsrt.encoder.{i}", "upsrt_block")
             for i in range(config.encoder_layers)]  # fmt: skip
    rows += [(f"ray_decoder.transformer_decoder.layers.{i}", f"upsrt.decoder.{i}", "upsrt_block")
             for i in range(config.decoder_layers)]  # fmt: skip
    linears = range(0, 2 * len(config.rgb_dims) + 1, 2)  # Linear, ReLU, ..., Linear (+ the official Sigmoid)
    return rows + [(f"ray_decoder.rgb_mlp.{i}", f"upsrt.rgb_head.{i}", "leaf") for i in linears]


def unet_rows(config, official: str, ours: str, controlnet: bool = False) -> list[Row]:
    """An LDM openaimodel UNet (input_blocks / middle_block / output_blocks) or the official ControlNetSLT
    (input_blocks / middle_block / zero_convs / input_hint_block / middle_block_out) -> diffusers' names."""
    attention = "slt" if controlnet else "transformer"
    rows = [("time_embed.0", "time_embedding.linear_1", "leaf"), ("time_embed.2", "time_embedding.linear_2", "leaf"),
            ("input_blocks.0.0", "conv_in", "leaf")]  # fmt: skip
    levels, per_level, block = len(config.block_out_channels), config.layers_per_block, 1
    for level, kind in enumerate(config.down_block_types):
        for r in range(per_level):
            rows.append((f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{r}", "resnet"))
            if kind.startswith("CrossAttn"):
                rows.append((f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{r}", attention))
            block += 1
        if level < levels - 1:
            rows.append((f"input_blocks.{block}.0.op", f"down_blocks.{level}.downsamplers.0.conv", "leaf"))
            block += 1
    rows += [("middle_block.0", "mid_block.resnets.0", "resnet"), ("middle_block.1", "mid_block.attentions.0", attention),
             ("middle_block.2", "mid_block.resnets.1", "resnet")]  # fmt: skip
    if controlnet:
        rows += [(f"zero_convs.{i}.0", f"controlnet_down_blocks.{i}", "leaf") for i in range(block)]
        rows += [("input_hint_block.0", "controlnet_cond_embedding", "leaf"),
                 ("middle_block_out.0", "controlnet_mid_block", "leaf")]  # fmt: skip
    else:
        block = 0
        for level, kind in enumerate(config.up_block_types):
            for r in range(per_level + 1):
                rows.append((f"output_blocks.{block}.0", f"up_blocks.{level}.resnets.{r}", "resnet"))
                upsampler = 1
                if kind.startswith("CrossAttn"):
                    rows.append(
                        (f"output_blocks.{block}.1", f"up_blocks.{level}.attentions.{r}", "transformer")
                    )
                    upsampler = 2
                if r == per_level and level < levels - 1:
                    rows.append((f"output_blocks.{block}.{upsampler}.conv", f"up_blocks.{level}.upsamplers.0.conv",
                                 "leaf"))  # fmt: skip
                block += 1
        rows += [("out.0", "conv_norm_out", "leaf"), ("out.2", "conv_out", "leaf")]
    return [(f"{official}.{a}", f"{ours}.{b}", kind) for a, b, kind in rows]


def vae_rows(config) -> list[Row]:
    """The LDM AutoencoderKL (encoder.down / decoder.up, mid.block_1/attn_1/block_2) -> diffusers AutoencoderKL."""
    levels, per_level = len(config.block_out_channels), config.layers_per_block
    rows = [("encoder.conv_in", "encoder.conv_in", "leaf"), ("decoder.conv_in", "decoder.conv_in", "leaf"),
            ("quant_conv", "quant_conv", "leaf"), ("post_quant_conv", "post_quant_conv", "leaf")]  # fmt: skip
    for level in range(levels):
        for r in range(per_level):
            rows.append(
                (f"encoder.down.{level}.block.{r}", f"encoder.down_blocks.{level}.resnets.{r}", "vae_resnet")
            )
        if level < levels - 1:
            rows.append((f"encoder.down.{level}.downsample.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv",
                         "leaf"))  # fmt: skip
        up = levels - 1 - level  # the LDM decoder counts its levels from the output side
        for r in range(per_level + 1):
            rows.append(
                (f"decoder.up.{level}.block.{r}", f"decoder.up_blocks.{up}.resnets.{r}", "vae_resnet")
            )
        if level > 0:
            rows.append(
                (f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv", "leaf")
            )
    for part in ("encoder", "decoder"):
        rows += [(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", "vae_resnet"),
                 (f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", "vae_attention"),
                 (f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", "vae_resnet"),
                 (f"{part}.norm_out", f"{part}.conv_norm_out", "leaf"), (f"{part}.conv_out", f"{part}.conv_out", "leaf")]  # fmt: skip
    return [(f"{VAE}.{a}", f"vae.{b}", kind) for a, b, kind in rows]


def upfusion2d_rows(components: Mapping[str, torch.nn.Module]) -> list[Row]:
    """upfusion2d.pt (control_net/cldm/cldm_dfslt.py ControlLDM) -> unet, controlnet, vae, text_encoder."""
    return [
        *unet_rows(components["unet"].config, UNET, "unet"),
        *unet_rows(components["controlnet"].config, CONTROLNET, "controlnet", controlnet=True),
        *vae_rows(components["vae"].config),
        (f"{TEXT}.transformer.text_model", "text_encoder", "same"),
    ]


# ----------------------------------------------------------------------------------------------------------
# Strict mapping
# ----------------------------------------------------------------------------------------------------------


def _lookup(key: str, table: Mapping[str, object]) -> tuple[str, object, str] | None:
    """(prefix, value, rest) for the longest dot-prefix of `key` in `table`, or None."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in table:
            return prefix, table[prefix], ".".join(parts[n:])
    return None


def rename(key: str, rows: Iterable[Row]) -> tuple[str, str] | None:
    """(our key "component.name", row kind) of an official key, or None when no row maps it."""
    found = _lookup(key, {official: (ours, kind) for official, ours, kind in rows})
    if found is None or not found[2]:
        return None
    _, (ours, kind), rest = found
    inner = KINDS[kind]
    if inner is None:
        return f"{ours}.{rest}", kind
    sub = _lookup(rest, inner)
    if sub is None:
        return None
    prefix, target, tail = sub
    return ".".join(p for p in (ours, target, tail) if p), kind


def official_name(ours: str, rows: Iterable[Row]) -> str:
    """The official key that fills one of our keys (the tables read backwards), for error messages."""
    found = _lookup(ours, {b: (a, kind) for a, b, kind in rows})
    if found is None:
        return "no official key"
    _, (official, kind), rest = found
    inner = KINDS[kind]
    if inner is not None:
        sub = _lookup(rest, {v: k for k, v in inner.items()})
        rest = "?" if sub is None else ".".join(p for p in (sub[1], sub[2]) if p)
    return f"{official}.{rest}"


def map_state_dict(
    source: Mapping[str, torch.Tensor],
    rows: list[Row],
    targets: Mapping[str, torch.Tensor],
    file: str,
    ray_layers: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Our tensors {"component.name": tensor} from an official state dict, every key accounted for both ways.

    targets: our expected keys and shapes; ray_layers: {"controlnet.<transformer>": index in SceneRayQueries}."""
    out: dict[str, torch.Tensor] = {}
    for key in sorted(source):
        mapped = rename(key, rows)
        if mapped is None:
            raise ConversionError(f"{file}: unknown key {key!r} (no row of the key table maps it)")
        ours, kind = mapped
        tensor = source[key]
        if kind == "vae_attention" and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]  # 1x1 conv -> linear
        pieces = {ours: tensor}
        if kind == "slt" and ours.endswith(".proj_in.weight"):
            width = (
                tensor.shape[1] - 6
            )  # [features; the query's 6 Plücker channels] -> proj_in + ray projection
            index = ray_layers[ours.removesuffix(".proj_in.weight")]
            pieces = {
                ours: tensor[:, :width],
                f"ray_queries.projections.{index}.weight": tensor[:, width:, 0, 0],
            }
        for name, value in pieces.items():
            if name not in targets:
                raise ConversionError(
                    f"{file}: unknown key {key!r} (it would fill {name!r}, which the converted model lacks)"
                )
            if tuple(value.shape) != tuple(targets[name].shape):
                raise ConversionError(
                    f"{file}: {key!r} has shape {tuple(tensor.shape)}; {name!r} needs {tuple(targets[name].shape)}"
                )
            out[name] = value.contiguous()
    return out


def check_filled(tensors: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], rows, file: str):
    """ConversionError naming the first of our keys that no official key filled."""
    missing = sorted(set(targets) - set(tensors))
    if missing:
        raise ConversionError(
            f"{file}: missing key {official_name(missing[0], rows)!r} (for {missing[0]!r}; {len(missing)} missing)"
        )


# ----------------------------------------------------------------------------------------------------------
# Loading and writing
# ----------------------------------------------------------------------------------------------------------


def load_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The `model_state_dict` of an official checkpoint, read with `torch.load(weights_only=True)` (no code runs)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise ConversionError(
            f"{path}: refused: unpickling it needs code to run, and only torch.load(weights_only=True) is used "
            f"({reason}). In an environment you trust, re-save its tensors: "
            f"torch.save({{'{STATE}': torch.load(path)['{STATE}']}}, path)"
        ) from error
    if not isinstance(checkpoint, dict) or STATE not in checkpoint:
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConversionError(f"{path}: expected a dict with {STATE!r} (the official layout); found {found}")
    state = checkpoint[STATE]
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ConversionError(f"{path}: {STATE}[{bad!r}] is a {type(state[bad]).__name__}, not a tensor")
    return dict(state)


def drop_buffers(
    state: dict[str, torch.Tensor], scheduler: DDIMScheduler, file: str
) -> dict[str, torch.Tensor]:
    """`state` without the noise-schedule buffers and CLIP's position_ids, after checking them."""
    for name in ("betas", "alphas_cumprod"):
        if name in state and not torch.allclose(
            state[name].double(), getattr(scheduler, name).double(), rtol=1e-5
        ):
            raise ConversionError(f"{file}: {name!r} differs from SD1.5's schedule ({PAPER_SCHEDULER})")
    if POSITION_IDS in state and not torch.equal(
        state[POSITION_IDS].flatten(), torch.arange(state[POSITION_IDS].numel())
    ):
        raise ConversionError(f"{file}: {POSITION_IDS!r} is not 0 .. L-1")
    return {k: v for k, v in state.items() if k not in (*SCHEDULE_BUFFERS, POSITION_IDS)}


def load_tokenizer(sd15: str | Path) -> CLIPTokenizer:
    """SD1.5's CLIP tokenizer from a folder (its tokenizer/ subfolder, or the folder itself) or a hub id."""
    folder = Path(sd15)
    if folder.is_dir():
        return CLIPTokenizer.from_pretrained(
            folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
        )
    return CLIPTokenizer.from_pretrained(str(sd15), subfolder="tokenizer")


def converted_components(
    upsrt_state: Mapping[str, torch.Tensor],
    upfusion2d_state: Mapping[str, torch.Tensor],
    image_encoder: Dinov2Model,
    tokenizer: CLIPTokenizer,
    config: str = "paper",
    files: tuple[str, str] = ("upsrt.pt", "upfusion2d.pt"),
) -> dict:
    """UpFusionPipeline components holding the official weights (modules built on the meta device, then assigned)."""
    with torch.device("meta"):
        components = paper_components(CONFIGS[config], tokenizer)
    components["scheduler"] = DDIMScheduler(**PAPER_SCHEDULER)
    text_config = components["text_encoder"].config
    components["text_encoder"] = CLIPTextModel(text_config)  # on the CPU: it holds a non-persistent buffer
    check_image_encoder(components["upsrt"], image_encoder)
    components["image_encoder"] = image_encoder
    modules = ("upsrt", "unet", "controlnet", "vae", "text_encoder", "ray_queries")
    targets = {f"{m}.{k}": v for m in modules for k, v in components[m].state_dict().items()}
    ray_layers = {k.replace("/", "."): i for i, k in enumerate(components["ray_queries"].config.layers)}

    rows = upsrt_rows(components["upsrt"].config)
    tensors = map_state_dict(
        upsrt_state, rows, {k: v for k, v in targets.items() if k.startswith("upsrt.")}, files[0]
    )
    check_filled(tensors, {k: v for k, v in targets.items() if k.startswith("upsrt.")}, rows, files[0])
    rows = upfusion2d_rows(components)
    state = drop_buffers(dict(upfusion2d_state), components["scheduler"], files[1])
    rest = {k: v for k, v in targets.items() if not k.startswith("upsrt.")}
    mapped = map_state_dict(state, rows, rest, files[1], ray_layers)
    for key in (k for k in rest if k.startswith("ray_queries.") and k.endswith(".bias")):
        mapped[key] = torch.zeros(rest[key].shape)  # the official proj_in has one bias, kept by proj_in
    check_filled(mapped, rest, rows, files[1])
    tensors.update(mapped)
    for m in modules:
        prefix = f"{m}."
        own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        components[m].load_state_dict(own, strict=True, assign=True)
        tensors_left = [*components[m].named_parameters(), *components[m].named_buffers()]
        left = next((n for n, t in tensors_left if t.is_meta), None)
        if left is not None:
            raise ConversionError(f"{m}.{left} was not filled (still a meta tensor)")
    return components


def convert_upfusion(
    upsrt: str | Path,
    upfusion2d: str | Path,
    dinov2: str | Path,
    sd15: str | Path,
    out: str | Path,
    config: str = "paper",
) -> Path:
    """Write a diffusers UpFusionPipeline folder (safetensors only, and a model card) from the official checkpoints."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"out: {out} exists and is not empty; pass a new or empty folder")
    upsrt_state, upfusion2d_state = load_official(upsrt), load_official(upfusion2d)
    tokenizer = load_tokenizer(sd15)
    image_encoder = Dinov2Model.from_pretrained(str(dinov2))
    components = converted_components(
        upsrt_state, upfusion2d_state, image_encoder, tokenizer, config, (str(upsrt), str(upfusion2d))
    )
    # Written beside `out` and renamed into place: a failure leaves no half-written folder.
    staging = out.parent / f".{out.name}.converting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        UpFusionPipeline(**components).save_pretrained(staging, safe_serialization=True)
        (staging / "README.md").write_text(
            model_card(Path(upsrt).name, Path(upfusion2d).name, str(dinov2), str(sd15))
        )
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def model_card(upsrt: str, upfusion2d: str, dinov2: str, sd15: str) -> str:
    """The converted folder's README.md."""
    return f"""# UpFusion (converted from the official checkpoints)

Novel views of an object from 1-6 unposed images: Kani et al., "UpFusion: Novel View Diffusion from Unposed Sparse
View Observations" (ECCV 2024), code and weights at https://github.com/upfusion3d/upfusion (MIT).

Converted with `pipelines.convert_upfusion` from `{upsrt}` and `{upfusion2d}`; DINOv2 ViT-B/14 from `{dinov2}`
(Apache-2.0); the CLIP tokenizer from `{sd15}`. The UNet, VAE and text encoder derive from Stable Diffusion 1.5
(CreativeML OpenRAIL-M).

    from pipelines.upfusion import UpFusionPipeline
    pipe = UpFusionPipeline.from_pretrained("<this folder>")
    views = pipe(images=[...], query_cameras=[(90, 0)]).images  # 256 px, CFG 9, DDIM 50 (the official defaults)

Inputs: 256 x 256 RGB images of one object on a white background; query cameras relative to the first image.
"""


# ----------------------------------------------------------------------------------------------------------
# Parameter counts at the paper's sizes (meta tensors: nothing is allocated)
# ----------------------------------------------------------------------------------------------------------


def _meta_components(config: str) -> dict:
    """The named configuration's components on the meta device (nothing is allocated)."""
    from pipelines.tokenizers import clip_tokenizer

    with torch.device("meta"):
        return paper_components(CONFIGS[config], clip_tokenizer())


def key_tables(config: str = "paper") -> str:
    """The conversion's row tables and renamings as Markdown (docs/upfusion.md prints the paper configuration's)."""
    components = _meta_components(config)
    lines = ["| official prefix | ours | kind |", "|---|---|---|"]
    for official, ours, kind in upsrt_rows(components["upsrt"].config) + upfusion2d_rows(components):
        lines.append(f"| `{official}` | `{ours}` | {kind} |")
    lines += ["", "| kind | official -> ours (the rest of the key) |", "|---|---|"]
    for kind, inner in KINDS.items():
        renamed = (
            "the same names" if inner is None else ", ".join(f"`{a}` -> `{b}`" for a, b in inner.items())
        )
        lines.append(f"| {kind} | {renamed} |")
    return "\n".join(lines) + "\n"


def parameter_counts(config: str = "paper") -> dict[str, int]:
    """Parameters per component of the named configuration, counted on the meta device."""
    components = _meta_components(config)
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in components.items()
        if isinstance(module, torch.nn.Module)
    }
