"""Tiny random pipelines built offline (tokenizers from in-memory vocabularies), for tests and benchmarks.

Every builder returns a complete diffusers pipeline whose components come from configs and seeded random
weights; nothing is downloaded. `save_and_reload` writes a pipeline with `save_pretrained` and loads it back
with `from_pretrained`, so the loading path used on real checkpoints is exercised too.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from pipelines.loading import absent_components, model_index

# ---------------------------------------------------------------------------------------------------------
# Tokenizers from in-memory vocabularies
# ---------------------------------------------------------------------------------------------------------

BASE_WORDS = (
    "a an the and with of on in to at left right top bottom center middle above below beside next "
    "red green blue yellow orange purple white black gray dark light bright "
    "circle square triangle cat dog car hat house tree photo picture painting of style golden hour "
    "high detail shadow spring bloom glossy background outlined striped small large big"
).split()

_CHARS = string.ascii_lowercase + string.digits + string.punctuation


def clip_tokenizer(words: Iterable[str] = BASE_WORDS, model_max_length: int = 77) -> CLIPTokenizer:
    """A byte-pair CLIP tokenizer in which each listed word is one token; other words split into characters.

    The merges come from BPE training on the word list (the most frequent adjacent pair first, ties broken by the
    pair itself, until every word is one token), so applying them in rank order rebuilds every listed word, and
    the same words always give the same ids (the `tokenizers` trainer breaks ties differently from run to run,
    which made tiny pipelines differ between processes)."""
    merges = learn_merges(dict.fromkeys(w.lower() for w in words if w))
    tokens = ["<|startoftext|>", "<|endoftext|>", *_CHARS, *(ch + "</w>" for ch in _CHARS)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*tokens, *(a + b for a, b in merges)]))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges learned on `words` (the most frequent adjacent pair first, ties broken by the pair itself) until
    every word is one `word</w>` token; deterministic."""
    segments = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(seg) > 1 for seg in segments.values()):
        counts: dict[tuple[str, str], int] = {}
        for seg in segments.values():
            for pair in zip(seg, seg[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        segments = {w: _merged(seg, best) for w, seg in segments.items()}
    return merges


def _merged(segment: list[str], pair: tuple[str, str]) -> list[str]:
    """`segment` with every adjacent occurrence of `pair` joined, left to right."""
    out, i = [], 0
    while i < len(segment):
        if i + 1 < len(segment) and (segment[i], segment[i + 1]) == pair:
            out.append(segment[i] + segment[i + 1])
            i += 2
        else:
            out.append(segment[i])
            i += 1
    return out


def t5_tokenizer(words: Iterable[str] = BASE_WORDS, model_max_length: int = 64) -> T5Tokenizer:
    """A unigram T5 tokenizer in which each listed word is one piece; other words split into characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w.lower(), -1.0) for w in dict.fromkeys(words)]
    pieces += [("\u2581", -5.0)] + [(ch, -10.0) for ch in _CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


# ---------------------------------------------------------------------------------------------------------
# Component builders
# ---------------------------------------------------------------------------------------------------------


def _clip_text_config(
    vocab_size: int, hidden: int = 32, projection: int = 32, layers: int = 2
) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=layers,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act="gelu",
    )


def tiny_vae(latent_channels: int = 4, scale_factor: int = 2, **kwargs) -> AutoencoderKL:
    """A tiny AutoencoderKL that downsamples by `scale_factor` (a power of two)."""
    blocks = scale_factor.bit_length()
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8,) * blocks,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=32,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------------------


def _eval(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Freshly built modules start in training mode (T5 has dropout): switch to eval, as from_pretrained does."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def tiny_sd3(
    seed: int = 0,
    num_layers: int = 4,
    num_heads: int = 4,
    head_dim: int = 8,
    qk_norm: str | None = None,
    dual_attention_layers: tuple[int, ...] = (),
) -> StableDiffusion3Pipeline:
    """A tiny random SD3 pipeline (MMDiT, flow matching, two CLIP encoders, no T5); 32x32 images -> 8x8 tokens."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        caption_projection_dim=num_heads * head_dim,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
        qk_norm=qk_norm,
        dual_attention_layers=dual_attention_layers,
        pos_embed_max_size=32,
    )
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(len(tokenizer)))
    vae = tiny_vae(
        latent_channels=4,
        scale_factor=2,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    return _eval(pipe)


def tiny_sd35(
    seed: int = 0, num_layers: int = 4, num_heads: int = 4, head_dim: int = 8
) -> StableDiffusion3Pipeline:
    """A tiny SD3.5-medium-style pipeline: qk_norm "rms_norm" and image-only dual attention in layers 0-1."""
    return tiny_sd3(seed, num_layers, num_heads, head_dim, qk_norm="rms_norm", dual_attention_layers=(0, 1))


def tiny_flux(
    seed: int = 0,
    num_layers: int = 2,
    num_single_layers: int = 3,
    num_heads: int = 2,
    head_dim: int = 16,
    guidance_embeds: bool = False,
) -> FluxPipeline:
    """A tiny random FLUX.1 pipeline (double + single stream blocks, CLIP + T5); 32x32 images -> 8x8 tokens."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
        guidance_embeds=guidance_embeds,
    )
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer)))
    tokenizer_2 = t5_tokenizer()
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    vae = tiny_vae(
        latent_channels=4,
        scale_factor=2,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )
    return _eval(pipe)


def _tiny_unet(cross_attention_dim: int, **kwargs) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        **kwargs,
    )


def tiny_sd15(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny random SD1.5-style pipeline (UNet with self- and cross-attention, one CLIP encoder)."""
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionPipeline(
        unet=_tiny_unet(cross_attention_dim=32),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _eval(pipe)


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny random SDXL-style pipeline (two CLIP encoders, pooled text and size conditioning)."""
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    unet = _tiny_unet(
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", timestep_spacing="leading"),
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(len(tokenizer))),
        tokenizer_2=clip_tokenizer(),
    )
    return _eval(pipe)


TINY_PIPELINES = {
    "sd3": tiny_sd3,
    "sd35": tiny_sd35,
    "flux": tiny_flux,
    "sd15": tiny_sd15,
    "sdxl": tiny_sdxl,
}


def save_and_reload(pipe: DiffusionPipeline, folder: str | Path, cls: type[DiffusionPipeline] | None = None):
    """Save `pipe` with `save_pretrained` (safetensors) and load it back with `from_pretrained`."""
    pipe.save_pretrained(folder, safe_serialization=True)
    cls = cls or type(pipe)
    return cls.from_pretrained(folder, **absent_components(cls, model_index(folder)))
