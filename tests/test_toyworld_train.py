"""Toy-world training pieces: the offline tokenizer, the null T5, the exact repeated-token attention shortcut."""

import json
from pathlib import Path

import pytest
import torch

from toyworld.scenes import caption, sample_scene, vocabulary
from toyworld.train import (
    ARCHS,
    RepeatedTokenJointAttnProcessor,
    build_null_t5,
    build_tokenizer,
    build_transformer,
    learn_bpe,
)

MODEL = Path(__file__).resolve().parents[1] / "assets" / "toy-sd3"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(ARCHS["sd3"]["max_text_length"])


def test_every_toyworld_word_is_one_token(tokenizer):
    for word in vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a red circle").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 5


def test_captions_fit_the_text_length(tokenizer):
    longest = max(len(tokenizer(caption(sample_scene(s, style_prob=0.5), s)).input_ids) for s in range(500))
    assert longest <= ARCHS["sd3"]["max_text_length"]


def test_unknown_words_fall_back_to_characters(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a red zebra", add_special_tokens=False).input_ids)
    assert tokens[:2] == ["a</w>", "red</w>"] and "".join(tokens[2:]) == "zebra</w>"


def test_learn_bpe_is_deterministic():
    assert learn_bpe(["red", "green", "circle"]) == learn_bpe(["red", "green", "circle"])


def test_null_t5_outputs_exact_zeros():
    tokenizer, encoder = build_null_t5(32)
    ids = tokenizer(
        ["a red circle on the left"], padding="max_length", max_length=16, return_tensors="pt"
    ).input_ids
    assert torch.equal(encoder(ids)[0], torch.zeros(1, 16, 32))


def test_repeated_token_processor_equals_repeating_the_token():
    torch.manual_seed(0)
    transformer = build_transformer(ARCHS["sd3"]).eval()
    with torch.no_grad():
        for module in transformer.modules():  # SD3 zero-initialises some outputs; make every path matter
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.05)
        x, pooled = torch.randn(2, 4, 16, 16), torch.randn(2, transformer.config.pooled_projection_dim)
        text = torch.randn(2, 7, transformer.config.joint_attention_dim)
        t = torch.tensor([250.0, 800.0])
        full = transformer(x, torch.cat([text, torch.zeros(2, 50, text.shape[-1])], 1), pooled, t).sample
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(50))
        fast = transformer(x, torch.cat([text, torch.zeros(2, 1, text.shape[-1])], 1), pooled, t).sample
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)


def test_repeated_token_processor_takes_one_count_per_row():
    torch.manual_seed(0)
    transformer = build_transformer(ARCHS["sd3"]).eval()
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.05)
        x, pooled = torch.randn(2, 4, 16, 16), torch.randn(2, transformer.config.pooled_projection_dim)
        text = torch.randn(2, 7, transformer.config.joint_attention_dim)
        t = torch.tensor([250.0, 800.0])
        rows = []
        for i, n in enumerate((1, 40)):
            context = torch.cat([text[i : i + 1], torch.zeros(1, n, text.shape[-1])], 1)
            rows.append(transformer(x[i : i + 1], context, pooled[i : i + 1], t[i : i + 1]).sample)
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(torch.tensor([1.0, 40.0])))
        fast = transformer(x, torch.cat([text, torch.zeros(2, 1, text.shape[-1])], 1), pooled, t).sample
    torch.testing.assert_close(fast, torch.cat(rows), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="assets/toy-sd3 not trained yet")
def test_trained_sd3_loads_offline_and_generates_at_its_resolution():
    from diffusers import StableDiffusion3Pipeline

    settings = json.loads((MODEL / "toyworld.json").read_text())
    pipe = StableDiffusion3Pipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (settings["width"], settings["height"])
    assert pipe.transformer.config.num_layers >= 6 and pipe.transformer.config.num_attention_heads >= 4
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 30 * 2**20
