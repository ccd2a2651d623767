"""Tiny random pipelines of the newer diffusers families (FLUX.2, Qwen-Image, Z-Image, Chroma, Wan), built offline.

Configs follow diffusers' own pipeline tests (`get_dummy_components`), with seeded random weights. Chroma gets a tiny
T5 encoder and Wan a tiny UMT5 encoder, both with the in-memory T5 tokenizer of `pipelines.tiny`. FLUX.2 (Mistral-3),
Qwen-Image (Qwen2.5-VL) and Z-Image (Qwen3) take precomputed embeddings by default (`prompt_embeds_for(name, batch)`
gives seeded ones of the right width); with `text_encoder=True` they get a tiny encoder of the class the pipeline
expects and a word-level tokenizer with a chat template built in memory (`chat_tokenizer`), so that a saved folder
runs from a plain prompt (the CLI, batch jobs, a head search).
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
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from pipelines.tiny import _CHARS, BASE_WORDS, _eval, t5_tokenizer

# Text width (the transformer's joint_attention_dim / text_dim / cap_feat_dim) and tokens of the embeddings.
TEXT_WIDTH = {"flux2": 16, "qwenimage": 16, "zimage": 16, "chroma": 32, "wan": 32}
TEXT_TOKENS = 6


def _tiny_t5(width: int = 32, umt5: bool = False):
    """A tiny T5 encoder (UMT5, Wan's, with `umt5`) and the in-memory T5 tokenizer."""
    tokenizer = t5_tokenizer()
    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_class(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return model_class(config), tokenizer


# ---------------------------------------------------------------------------------------------------------
# A word-level tokenizer with a chat template, for the chat-model text encoders (Mistral-3, Qwen2.5-VL, Qwen3)
# ---------------------------------------------------------------------------------------------------------

CHAT_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "[IMG]")  # fmt: skip
# One template for the three pipelines' messages: a text `content`, or a list of {"type": "text", "text": ...}
# parts (FLUX.2's Mistral format); `<|im_start|>role\n ... <|im_end|>\n` per message, as Qwen's.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
# Qwen-Image drops the first 34 tokens of its template (its system prompt, as Qwen2's tokenizer cuts it); these
# words make the same prompt 34 tokens here too (`tests/test_cli_families.py` checks it).
TEMPLATE_WORDS = (
    "system user assistant describe image by detailing color shape size texture quantity text spatial "
    "relationships objects"
).split()


def chat_tokenizer(words=BASE_WORDS, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory: every listed word (lower-cased), each punctuation character and a
    newline are one token, other words are `<unk>`; `CHAT_SPECIALS` are special tokens; `CHAT_TEMPLATE` is its
    chat template. Enough for the chat-model text encoders of FLUX.2, Qwen-Image and Z-Image at tiny size."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    pieces = [*CHAT_SPECIALS, "\n", *(c for c in _CHARS if not c.isalnum())]
    pieces += [w.lower() for w in [*words, *TEMPLATE_WORDS]]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\n|[^\w\s]"), behavior="isolated"),
    ])  # fmt: skip
    backend.add_special_tokens(list(CHAT_SPECIALS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
        model_max_length=model_max_length,
    )  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _token(tokenizer: PreTrainedTokenizerFast, piece: str) -> int:
    return tokenizer.convert_tokens_to_ids(piece)


# FLUX.2 stacks the hidden states of its encoder's layers 10, 20 and 30 (`text_encoder_out_layers`' default).
FLUX2_TEXT_LAYERS = 30
FLUX2_TEXT_HIDDEN = 16


def _tiny_mistral3(tokenizer: PreTrainedTokenizerFast) -> Mistral3ForConditionalGeneration:
    """FLUX.2's text encoder at tiny size (diffusers' test config, 30 layers so that layers 10, 20, 30 exist)."""
    ids = {"bos_token_id": _token(tokenizer, "<s>"), "eos_token_id": _token(tokenizer, "<|im_end|>"),
           "pad_token_id": _token(tokenizer, "<pad>")}  # fmt: skip
    config = Mistral3Config(
        text_config={"model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": FLUX2_TEXT_HIDDEN,
                     "intermediate_size": 24, "max_position_embeddings": 1024, "num_attention_heads": 4,
                     "num_hidden_layers": FLUX2_TEXT_LAYERS, "num_key_value_heads": 2, "rms_norm_eps": 1e-05,
                     "rope_theta": 1000000000.0, "sliding_window": None, **ids},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "intermediate_size": 24, "image_size": 30, "patch_size": 6, "num_channels": 3},
        image_seq_length=4, vision_feature_layer=-1, image_token_index=_token(tokenizer, "[IMG]"), **ids,
    )  # fmt: skip
    return Mistral3ForConditionalGeneration(config)


def _tiny_qwen25vl(tokenizer: PreTrainedTokenizerFast, width: int) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen-Image's text encoder at tiny size (diffusers' test config, the vocabulary of `tokenizer`)."""
    ids = {"bos_token_id": _token(tokenizer, "<s>"), "eos_token_id": _token(tokenizer, "<|im_end|>")}
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": width, "intermediate_size": width, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, **ids},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": width},
        hidden_size=width, vocab_size=len(tokenizer), vision_start_token_id=_token(tokenizer, "<|vision_start|>"),
        vision_end_token_id=_token(tokenizer, "<|vision_end|>"), vision_token_id=_token(tokenizer, "<|vision_pad|>"),
        image_token_id=_token(tokenizer, "<|image_pad|>"), video_token_id=_token(tokenizer, "<|video_pad|>"), **ids,
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config)


def _tiny_qwen3(tokenizer: PreTrainedTokenizerFast, width: int) -> Qwen3Model:
    """Z-Image's text encoder at tiny size (its second-to-last hidden state is the caption feature)."""
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        pad_token_id=_token(tokenizer, "<pad>"),
    )  # fmt: skip
    return Qwen3Model(config)


def tiny_flux2(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2, num_heads: int = 2,
               head_dim: int = 16, text_encoder: bool = False) -> Flux2Pipeline:  # fmt: skip
    """FLUX.2: double + single stream blocks ([text, image]), a distilled guidance embedding, no CFG batch; with
    `text_encoder`, a tiny Mistral-3 (its layers 10, 20, 30 stacked: text width 48) and `chat_tokenizer`."""
    torch.manual_seed(seed)
    width = 3 * FLUX2_TEXT_HIDDEN if text_encoder else TEXT_WIDTH["flux2"]
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=num_heads, joint_attention_dim=width,
        timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    encoder, tokenizer = _text_encoder(seed, text_encoder, _tiny_mistral3)
    pipe = Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
        transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


def tiny_qwenimage(
    seed: int = 0, num_layers: int = 2, num_heads: int = 3, head_dim: int = 16, text_encoder: bool = False
) -> QwenImagePipeline:
    """Qwen-Image: joint [text, image] attention in every block, true CFG as a separate uncond call; with
    `text_encoder`, a tiny Qwen2.5-VL and `chat_tokenizer`."""
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
    encoder, tokenizer = _text_encoder(
        seed, text_encoder, lambda t: _tiny_qwen25vl(t, TEXT_WIDTH["qwenimage"])
    )
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
        transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


def tiny_zimage(
    seed: int = 0, num_layers: int = 2, num_heads: int = 2, dim: int = 32, text_encoder: bool = False
) -> ZImagePipeline:
    """Z-Image: single-stream layers over a padded [image, caption] sequence per sample; batched CFG [cond, uncond];
    with `text_encoder`, a tiny Qwen3 and `chat_tokenizer`."""
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
    encoder, tokenizer = _text_encoder(seed, text_encoder, lambda t: _tiny_qwen3(t, TEXT_WIDTH["zimage"]))
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
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
    """Wan 2.1 text-to-video: self-attention (attn1) over every frame's tokens, cross-attention (attn2) to UMT5."""
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=TEXT_WIDTH["wan"], freq_dim=256, ffn_dim=32, num_layers=num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip
    text_encoder, tokenizer = _tiny_t5(TEXT_WIDTH["wan"], umt5=True)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])  # fmt: skip
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=transformer,
    )  # fmt: skip
    return _eval(pipe)


def _text_encoder(seed: int, wanted: bool, build) -> tuple:
    """(encoder, tokenizer) built by `build(chat_tokenizer())` with its own seed (so the other components stay
    those of the pipeline without one), or (None, None)."""
    if not wanted:
        return None, None
    tokenizer = chat_tokenizer()
    torch.manual_seed(seed)
    return build(tokenizer).eval(), tokenizer


# The families whose tiny pipeline takes precomputed embeddings unless built with `text_encoder=True`.
EMBEDS_ONLY = ("flux2", "qwenimage", "zimage")


def tiny_family(name: str, seed: int = 0, text_encoder: bool = True):
    """The tiny pipeline of family `name`; with `text_encoder` (the default here) one that runs from a prompt."""
    if name in EMBEDS_ONLY:
        return TINY_FAMILIES[name](seed, text_encoder=text_encoder)
    return TINY_FAMILIES[name](seed)


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
