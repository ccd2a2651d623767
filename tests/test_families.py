"""The generic attention adapter and the newer families' HeadHunter pipelines, on tiny random models built offline.

FLUX.2, Qwen-Image and Z-Image run on precomputed `prompt_embeds` (their tokenizers cannot be built offline at tiny
size); Chroma and Wan run from prompts through a tiny T5.
"""

import functools
import inspect

import diffusers
import pytest
import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from fixtures.tiny import tiny_flux, tiny_sd3, tiny_sd35
from fixtures.tiny_families import TINY_FAMILIES, prompt_embeds_for
from guidance.config import SoftPAGError
from guidance.generic import generic_layout, intercepted_calls
from guidance.layouts import FAMILIES, layout_of
from guidance.processors import PerturbationState
from guidance.scope import CallScope
from pipelines.headhunter import HeadHunterPipeline
from pipelines.loading import absent_components, model_index

FAMILY_PIPELINES = {
    "flux2": "Flux2Pipeline",
    "qwenimage": "QwenImagePipeline",
    "zimage": "ZImagePipeline",
    "chroma": "ChromaPipeline",
    "wan": "WanPipeline",
}
EMBEDS_ONLY = ("flux2", "qwenimage", "zimage")


def call_kwargs(name: str, batch: int = 1, seed: int = 0) -> dict:
    """A short call of family `name` for `batch` images, one generator per image (so rows match single runs)."""
    kwargs = dict(num_inference_steps=2, height=16, width=16, output_type="latent")
    kwargs["generator"] = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    if name in EMBEDS_ONLY:
        kwargs.update(prompt_embeds_for(name, batch))
    else:
        prompts = ["a red circle", "a blue square", "a green tree"]
        kwargs.update(prompt=prompts[:batch], negative_prompt=["dark"] * batch, max_sequence_length=8)
        kwargs.update(guidance_scale=3.0)
    if name == "wan":
        kwargs.update(num_frames=5)
    if name == "qwenimage":
        negative = prompt_embeds_for(name, batch, seed=1)
        kwargs.update(true_cfg_scale=2.0, negative_prompt_embeds=negative["prompt_embeds"],
                      negative_prompt_embeds_mask=negative["prompt_embeds_mask"])  # fmt: skip
    if name == "zimage":
        kwargs.update(negative_prompt_embeds=prompt_embeds_for(name, batch, seed=1)["prompt_embeds"])
        kwargs.update(guidance_scale=3.0)
    return kwargs


def run(pipe, name, batch=1, **pag):
    out = pipe(**call_kwargs(name, batch), **pag)[0]
    return torch.stack(out) if isinstance(out, list) else out


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory):
    cache = {}

    def folder(name):
        if name not in cache:
            cache[name] = tmp_path_factory.mktemp(name)
            TINY_FAMILIES[name]().save_pretrained(cache[name])
        return cache[name]

    return folder


@pytest.fixture(scope="module")
def loaded(family_folder):
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = HeadHunterPipeline.from_pretrained(family_folder(name))
            cache[name].set_progress_bar_config(disable=True)
        return cache[name]

    return load


# -- the adapter ---------------------------------------------------------------------------------------------


def _transformer_inputs(arch: str, batch: int) -> dict:
    torch.manual_seed(1)
    if arch == "sd3":
        return dict(hidden_states=torch.randn(batch, 4, 16, 16), encoder_hidden_states=torch.randn(batch, 7, 64),
                    pooled_projections=torch.randn(batch, 64), timestep=torch.full((batch,), 500.0))  # fmt: skip
    return dict(hidden_states=torch.randn(batch, 64, 16), encoder_hidden_states=torch.randn(batch, 7, 32),
                pooled_projections=torch.randn(batch, 32), timestep=torch.full((batch,), 0.5),
                img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(7, 3))  # fmt: skip


def _forward(model, processors, replaceable, strengths, identity, inputs):
    state = PerturbationState(identity, strengths, text_tokens=inputs["encoder_hidden_states"].shape[1])
    with CallScope(state, "pag_heads").processors(model, processors, replaceable), torch.no_grad():
        return model(**inputs).sample


@functools.cache
def _hand_written_model(name: str) -> torch.nn.Module:
    return {"sd3": tiny_sd3, "sd35": tiny_sd35, "flux": tiny_flux}[name]().transformer


@pytest.mark.parametrize("identity", ["joint", "image"])
@pytest.mark.parametrize("name", ["sd3", "sd35", "flux"])
def test_generic_adapter_equals_hand_written(name, identity):
    model = _hand_written_model(name)
    hand, generic = layout_of(model), generic_layout(model)
    assert hand.heads_per_layer == generic.heads_per_layer  # same layer numbering
    inputs = _transformer_inputs(hand.arch, 3)
    torch.manual_seed(2)
    strengths = {}
    for site in hand.sites.values():
        u = torch.rand(3, site.heads) * (torch.rand(3, site.heads) > 0.4)
        strengths[site.name] = u.index_fill(0, torch.tensor([0]), 0.0)  # row 0: untouched
    names = list(strengths)
    ours = _forward(
        model, {n: hand.processor(n) for n in names}, hand.replaceable, strengths, identity, inputs
    )
    theirs = _forward(model, {n: generic.processor(n) for n in names}, generic.replaceable, strengths, identity,
                      inputs)  # fmt: skip
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    with torch.no_grad():
        plain = model(**inputs).sample
    torch.testing.assert_close(theirs[0], plain[0], atol=1e-6, rtol=0)
    assert (theirs[1:] - plain[1:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(FAMILY_PIPELINES))
def test_every_site_is_intercepted(name, loaded):
    pipe = loaded(name)
    kwargs = {**call_kwargs(name), "num_inference_steps": 1}
    counts = intercepted_calls(pipe.transformer, lambda: pipe(**kwargs))
    assert set(counts) == {site.name for site in generic_layout(pipe.transformer).sites.values()}
    assert min(counts.values()) >= 1


class _IndirectFluxProcessor(FluxAttnProcessor):
    """Names dispatch_attention_fn but attends through the parent's function, which the adapter cannot see."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None
    ):
        if hidden_states is None:
            return dispatch_attention_fn(hidden_states, hidden_states, hidden_states)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def test_unsupported_attention_is_refused_never_silently_unperturbed():
    model = tiny_flux().transformer
    with pytest.raises(TypeError, match="no layout for Linear"):
        generic_layout(torch.nn.Linear(2, 2))
    from diffusers.models.attention_processor import AttnProcessor

    model.transformer_blocks[0].attn.processor = AttnProcessor()  # bmm attention: neither function
    with pytest.raises(SoftPAGError, match="transformer_blocks.0.attn uses AttnProcessor"):
        generic_layout(model)
    model.transformer_blocks[0].attn.processor = _IndirectFluxProcessor()
    layout = generic_layout(model)
    name = "transformer_blocks.0.attn"
    inputs = _transformer_inputs("flux", 1)
    with pytest.raises(SoftPAGError, match="made no intercepted attention call"):
        _forward(
            model,
            {name: layout.processor(name)},
            layout.replaceable,
            {name: torch.ones(1, 2)},
            "joint",
            inputs,
        )
    assert type(model.transformer_blocks[0].attn.processor) is _IndirectFluxProcessor


def test_family_table_names_the_transformers():
    assert {f.name for f in FAMILIES.values()} >= set(FAMILY_PIPELINES)


# -- the pipelines -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILY_PIPELINES))
def test_reloaded_subclass_zero_strength_equals_parent(name, loaded, family_folder):
    pipe = loaded(name)
    parent_cls = getattr(diffusers, FAMILY_PIPELINES[name])
    assert isinstance(pipe, parent_cls) and type(pipe).__name__ == f"HeadHunter{FAMILY_PIPELINES[name]}"
    folder = family_folder(name)
    parent = parent_cls.from_pretrained(folder, **absent_components(parent_cls, model_index(folder)))
    parent.set_progress_bar_config(disable=True)
    plain = run(parent, name)
    heads = "L1H0,L1H1"
    torch.testing.assert_close(run(pipe, name, pag_heads=heads, pag_strength=0.0), plain, atol=1e-5, rtol=0)
    assert (run(pipe, name, pag_heads=heads, pag_strength=1.0, pag_scale=3.0) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(FAMILY_PIPELINES))
def test_rows_with_different_heads_equal_one_by_one_runs(name, loaded):
    pipe = loaded(name)
    selections = ["L0H1", "L1H0=0.5"]
    batched = run(pipe, name, batch=2, pag_heads_per_image=selections, pag_scale=2.0)
    for i, heads in enumerate(selections):
        kwargs = call_kwargs(name, 2)
        single = {k: (v[i : i + 1] if isinstance(v, list | torch.Tensor) and len(v) == 2 else v)
                  for k, v in kwargs.items()}  # fmt: skip
        out = pipe(**single, pag_heads=heads, pag_scale=2.0)[0]
        out = torch.stack(out) if isinstance(out, list) else out
        torch.testing.assert_close(batched[i : i + 1], out, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(FAMILY_PIPELINES))
def test_processors_and_hooks_restored_after_an_exception(name, loaded):
    pipe = loaded(name)
    sites = [site.name for site in generic_layout(pipe.transformer).sites.values()]
    before = {n: pipe.transformer.get_submodule(n).processor for n in sites}

    def fail(*args, **kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        pipe(**call_kwargs(name), pag_heads="L0H0", callback_on_step_end=fail)
    assert all(pipe.transformer.get_submodule(n).processor is p for n, p in before.items())
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer._forward_hooks
    assert "step" not in vars(pipe.scheduler)


def _rows_seen(pipe, name, batch, **pag):
    """Rows of each denoiser call (after our pre-hook) and the guidance embedding it got."""
    seen = []

    signature = inspect.signature(pipe.transformer.forward)

    def record(module, args, kwargs, output):
        inputs = signature.bind(*args, **kwargs).arguments
        seen.append((len(next(iter(inputs.values()))), inputs.get("guidance")))

    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        pipe(**{**call_kwargs(name, batch), "num_inference_steps": 1}, **pag)
    finally:
        handle.remove()
    return seen


def test_guidance_distilled_flux2_branch_layout(loaded):
    """FLUX.2 (distilled guidance embedding, no CFG batch): one call per step, [cond ; perturbed cond] rows, and the
    perturbed rows get the same guidance value."""
    seen = _rows_seen(loaded("flux2"), "flux2", 2, pag_heads="L0H0")
    assert len(seen) == 1
    rows, guidance = seen[0]
    assert rows == 4 and guidance.shape == (4,) and torch.all(guidance == guidance[0])


@pytest.mark.parametrize(("name", "layout"), [("qwenimage", [2, 1]), ("chroma", [2, 1]), ("wan", [2, 1]),
                                              ("zimage", [3])])  # fmt: skip
def test_cfg_branch_layouts(name, layout, loaded):
    """Separate-call CFG (Qwen-Image, Chroma, Wan): only the cond call grows. Z-Image's [cond, uncond] batch
    gets one perturbed copy of its cond row."""
    assert [rows for rows, _ in _rows_seen(loaded(name), name, 1, pag_heads="L0H0")] == layout


def test_video_heads_perturb_every_frame(loaded):
    pipe = loaded("wan")
    plain = run(pipe, "wan")
    guided = run(pipe, "wan", pag_heads="L0H0,L0H1", pag_scale=3.0)
    per_frame = (guided - plain).abs().amax(dim=(0, 1, 3, 4))
    assert per_frame.shape[0] > 1 and torch.all(per_frame > 1e-4)


def test_image_identity_refused_where_the_token_order_is_unknown(loaded):
    with pytest.raises(SoftPAGError, match="token order of layers.0.attention"):
        run(loaded("zimage"), "zimage", pag_heads="L0H0", pag_identity="image")


def test_wan22_second_transformer_is_refused(loaded):
    pipe = loaded("wan")
    two = type(pipe).from_pipe(pipe, transformer_2=pipe.transformer, boundary_ratio=0.5)
    with pytest.raises(SoftPAGError, match="transformer_2"):
        run(two, "wan", pag_heads="L0H0")


@pytest.mark.parametrize("name", ["flux2", "qwenimage", "chroma", "wan"])
def test_image_identity_where_the_token_order_is_known(name, loaded):
    """[text, image] families: the image identity differs from the joint one; Wan's self-attention sees image
    tokens only, so there the two are the same map."""
    pipe = loaded(name)
    joint = run(pipe, name, pag_heads="L0H0,L1H1", pag_scale=3.0)
    image = run(pipe, name, pag_heads="L0H0,L1H1", pag_scale=3.0, pag_identity="image")
    if name == "wan":
        torch.testing.assert_close(image, joint, atol=1e-5, rtol=0)
    else:
        assert (image - joint).abs().max() > 1e-4
