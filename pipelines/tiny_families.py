"""Tiny random pipelines of the newer diffusers families (FLUX.2, Qwen-Image, Z-Image, Chroma, Wan), built offline.

Configs follow diffusers' own pipeline tests (`get_dummy_components`), with seeded random weights. Chroma and Wan
get a tiny T5 encoder and the in-memory T5 tokenizer of `pipelines.tiny`. FLUX.2 (Mistral-3 with a chat-template
processor), Qwen-Image (Qwen2.5-VL) and Z-Image (Qwen3 with a chat template) need tokenizers that cannot be built
offline at tiny size, so those pipelines have no text encoder and take precomputed embeddings:
`prompt_embeds_for(name, batch)` gives seeded ones of the right width.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    AutoencoderKLWan,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    WanPipeline,
    WanTransformer3DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from transformers import T5Config, T5EncoderModel

from pipelines.tiny import _eval, t5_tokenizer

# Text width (the transformer's joint_attention_dim / text_dim / cap_feat_dim) and tokens of the embeddings.
TEXT_WIDTH = {"flux2": 16, "qwenimage": 16, "zimage": 16, "chroma": 32, "wan": 32}
TEXT_TOKENS = 6


def _tiny_t5(width: int = 32):
    tokenizer = t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5EncoderModel(config), tokenizer


def tiny_flux2(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2, num_heads: int = 2,
               head_dim: int = 16) -> Flux2Pipeline:  # fmt: skip
    """FLUX.2: double + single stream blocks ([text, image]), a distilled guidance embedding, no CFG batch."""
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=num_heads, joint_attention_dim=TEXT_WIDTH["flux2"],
        timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    pipe = Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
        transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


def tiny_qwenimage(
    seed: int = 0, num_layers: int = 2, num_heads: int = 3, head_dim: int = 16
) -> QwenImagePipeline:
    """Qwen-Image: joint [text, image] attention in every block, true CFG as a separate uncond call."""
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers, attention_head_dim=head_dim,
        num_attention_heads=num_heads, joint_attention_dim=TEXT_WIDTH["qwenimage"], guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
        transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


def tiny_zimage(seed: int = 0, num_layers: int = 2, num_heads: int = 2, dim: int = 32) -> ZImagePipeline:
    """Z-Image: single-stream layers over a padded [image, caption] sequence per sample; batched CFG [cond, uncond]."""
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=dim, n_layers=num_layers,
        n_refiner_layers=1, n_heads=num_heads, n_kv_heads=num_heads, norm_eps=1e-5, qk_norm=True,
        cap_feat_dim=TEXT_WIDTH["zimage"], rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )  # fmt: skip
    with torch.no_grad():  # the pad tokens start as torch.empty (diffusers' test fixes them the same way)
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
        latent_channels=16, norm_num_groups=8, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
    )  # fmt: skip
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
        transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


def tiny_chroma(seed: int = 0, num_layers: int = 1, num_single_layers: int = 2, num_heads: int = 2,
                head_dim: int = 16) -> ChromaPipeline:  # fmt: skip
    """Chroma: FLUX.1-shaped blocks with a T5 encoder and a text attention mask; true CFG as a separate call."""
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=num_heads, joint_attention_dim=TEXT_WIDTH["chroma"],
        axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=32, approximator_layers=1,
    )  # fmt: skip
    text_encoder, tokenizer = _tiny_t5(TEXT_WIDTH["chroma"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=1, norm_num_groups=2, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


def tiny_wan(seed: int = 0, num_layers: int = 2, num_heads: int = 2, head_dim: int = 12) -> WanPipeline:
    """Wan 2.1 text-to-video: self-attention (attn1) over every frame's tokens, cross-attention (attn2) to T5."""
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=TEXT_WIDTH["wan"], freq_dim=256, ffn_dim=32, num_layers=num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip
    text_encoder, tokenizer = _tiny_t5(TEXT_WIDTH["wan"])
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])  # fmt: skip
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


TINY_FAMILIES = {
    "flux2": tiny_flux2,
    "qwenimage": tiny_qwenimage,
    "zimage": tiny_zimage,
    "chroma": tiny_chroma,
    "wan": tiny_wan,
}


def prompt_embeds_for(name: str, batch: int = 1, seed: int = 0, tokens: int = TEXT_TOKENS) -> dict:
    """Seeded precomputed text inputs for a family without a tiny text encoder: the call's keyword arguments."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, tokens, TEXT_WIDTH[name], generator=generator)
    if name == "zimage":  # Z-Image takes one (tokens, width) tensor per prompt
        return {"prompt_embeds": list(embeds.unbind(0))}
    if name == "qwenimage":
        return {"prompt_embeds": embeds, "prompt_embeds_mask": torch.ones(batch, tokens, dtype=torch.long)}
    return {"prompt_embeds": embeds}
