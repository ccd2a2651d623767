"""Cheaper SoftPAG (issue 28): `pag_every` (perturbed rows on every k-th step, the last PAG term reused between) and
`pag_branch="uncond"` (CFG's own uncond rows perturbed, two branches instead of three), on the tiny pipelines."""

import pytest
import torch

import guidance.perturbation as perturbation
from fixtures.tiny import tiny_flux, tiny_sd3
from fixtures.tiny_families import TINY_FAMILIES, prompt_embeds_for
from guidance.config import SOFTPAG_SETTINGS, SoftPAGConfig, SoftPAGError
from guidance.guider import SoftPAGGuidance
from guidance.layouts import layout_of
from guidance.processors import PerturbationState, active_state
from guidance.scope import CallScope
from pipelines.headhunter import HeadHunterPipeline
from tools.settings import image_record, record_call

HEADS = "L1H0,L2H3"
CALL = dict(prompt="a red circle", num_inference_steps=4, height=32, width=32, max_sequence_length=8)


@pytest.fixture(scope="module")
def sd3():
    pipe = HeadHunterPipeline.from_pipe(tiny_sd3())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe, guidance_scale=4.0, **kwargs):
    call = dict(CALL, guidance_scale=guidance_scale, output_type="latent")
    call.update((k, kwargs.pop(k)) for k in list(kwargs) if k in call)
    return pipe(generator=torch.Generator().manual_seed(0), **call, **kwargs).images


def batch_sizes(pipe, module: str, **kwargs) -> list[list[int]]:
    """Per step, the batch size of every call of attention `module` (the SoftPAG processor's rows)."""
    steps: list[list[int]] = [[]]
    attention = pipe.transformer.get_submodule(module)
    handle = attention.register_forward_pre_hook(
        lambda m, args, kw: steps[-1].append((kw.get("hidden_states", args[0] if args else None)).shape[0]),
        with_kwargs=True,
    )

    def on_step(p, i, t, kw):
        steps.append([])
        return {}

    try:
        pipe(generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step, **kwargs)
    finally:
        handle.remove()
    return steps[:-1]


# -- today's images ------------------------------------------------------------------------------------------


def test_defaults_give_todays_images_bit_for_bit(sd3):
    today = latents(sd3, pag_heads=HEADS, pag_scale=2.0)
    assert torch.equal(latents(sd3, pag_heads=HEADS, pag_scale=2.0, pag_every=1, pag_branch="cond"), today)
    assert torch.equal(latents(sd3, pag_heads=HEADS, pag_scale=2.0, pag_every=1, pag_stop=0.5), latents(
        sd3, pag_heads=HEADS, pag_scale=2.0, pag_stop=0.5))  # fmt: skip
    assert SoftPAGConfig.call_defaults()["pag_every"] == 1
    assert SoftPAGConfig.call_defaults()["pag_branch"] == "cond"


# -- pag_every -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "every, window, expected",
    [
        (2, {}, [3, 2, 3, 2, 3, 2, 3, 2]),
        (3, {}, [3, 2, 2, 3, 2, 2, 3, 2]),
        (3, dict(pag_start=0.25), [2, 2, 3, 2, 2, 3, 2, 2]),  # the window's first step, then every 3rd
        (2, dict(pag_stop=0.3), [3, 2, 3, 2, 2, 2, 2, 2]),  # steps 0-2 in the window: 0 and 2 perturbed
    ],
)
def test_every_k_runs_the_perturbed_rows_on_exactly_those_steps(sd3, every, window, expected):
    """CFG batch [uncond, cond] = 2 rows; + 1 perturbed copy on the steps that run it (no rows in between)."""
    call = dict(CALL, num_inference_steps=8, output_type="latent", guidance_scale=4.0)
    sizes = batch_sizes(sd3, "transformer_blocks.1.attn", **call, pag_heads=HEADS, pag_every=every, **window)
    assert [s for (s,) in sizes] == expected


def test_every_k_reuses_the_last_pag_term_as_it_is(sd3, monkeypatch):
    """On the steps between, the PAG term added at scheduler.step is the last computed one, unscaled; the first
    step's term equals the every-step call's."""
    folded: list[torch.Tensor] = []
    real = perturbation.fold_guidance

    def spy(model_output, delta, pure, rescale):
        folded.append(delta.clone())
        return real(model_output, delta, pure, rescale)

    monkeypatch.setattr(perturbation, "fold_guidance", spy)
    latents(sd3, pag_heads=HEADS, pag_every=3)
    every3, folded[:] = list(folded), []
    latents(sd3, pag_heads=HEADS)
    assert len(every3) == len(folded) == 4
    assert torch.equal(every3[0], folded[0])
    assert torch.equal(every3[1], every3[0]) and torch.equal(every3[2], every3[0])
    assert not torch.equal(every3[3], every3[0])  # step 3 computes a new term
    assert not torch.equal(folded[1], folded[0])


def test_every_k_on_flux_true_cfg(tmp_path):
    """FLUX.1 (hand-written processors, cond and true-CFG uncond as separate calls): the main call grows on
    every 2nd step only; the uncond call never does."""
    pipe = HeadHunterPipeline.from_pipe(tiny_flux())
    pipe.set_progress_bar_config(disable=True)
    call = dict(CALL, output_type="latent", negative_prompt="dark", true_cfg_scale=2.0)
    sizes = batch_sizes(pipe, "transformer_blocks.0.attn", **call, pag_heads="L0H0", pag_every=2)
    assert sizes == [[2, 1], [1, 1], [2, 1], [1, 1]]


def _family(name):
    pipe = HeadHunterPipeline.from_pipe(TINY_FAMILIES[name]())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _family_call(name) -> dict:
    call = dict(num_inference_steps=4, height=16, width=16, output_type="latent")
    if name == "flux2":
        call.update(prompt_embeds_for(name))
    else:  # wan
        call.update(prompt="a red circle", negative_prompt="dark", max_sequence_length=8, num_frames=5)
        call.update(guidance_scale=3.0)
    return call


@pytest.mark.parametrize(
    "name, module, expected",
    [
        ("flux2", "transformer_blocks.0.attn", [[2], [1], [1], [2]]),  # no CFG: [cond] + 1 perturbed copy
        ("wan", "blocks.0.attn1", [[2, 1], [1, 1], [1, 1], [2, 1]]),  # cond call, then the uncond call
    ],
)
def test_every_k_on_the_generic_path(name, module, expected):
    pipe, call = _family(name), _family_call(name)
    assert batch_sizes(pipe, module, **call, pag_heads="L0H0", pag_every=3) == expected

    def run(**pag):
        return pipe(generator=torch.Generator().manual_seed(0), **call, pag_heads="L0H0", **pag)[0]

    each = run()
    assert torch.equal(run(pag_every=1), each) and not torch.equal(run(pag_every=3), each)


# -- pag_branch="uncond" -------------------------------------------------------------------------------------


def test_uncond_branch_is_cfg_with_the_perturbed_uncond_by_hand(sd3):
    """One step by hand: eps_u~ from the transformer on the uncond row with a SoftPAG processor installed by hand,
    eps_c without; the pipeline's step equals x + (sigma_1 - sigma_0) (eps_u~ + w (eps_c - eps_u~))."""
    transformer, seen = sd3.transformer, {}

    def keep(module, args, kwargs, output):
        seen.setdefault("inputs", {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        seen.setdefault("output", output[0].clone())

    handle = transformer.register_forward_hook(keep, with_kwargs=True)
    try:
        out = latents(
            sd3, guidance_scale=4.0, num_inference_steps=1, pag_heads="L1H0,L2H3=0.5", pag_branch="uncond"
        )
    finally:
        handle.remove()
    inputs = seen["inputs"]
    assert inputs["hidden_states"].shape[0] == 2  # [uncond, cond]: no added rows
    rows = {k: (v[:1], v[1:]) if torch.is_tensor(v) and v.ndim and v.shape[0] == 2 else (v, v)
            for k, v in inputs.items()}  # fmt: skip
    layout = layout_of(transformer)
    names = {layout.sites[1, "attn"].name: (0, 1.0), layout.sites[2, "attn"].name: (3, 0.5)}
    strengths = {}
    for name, (head, u) in names.items():
        strengths[name] = torch.zeros(1, layout.heads_of(name))
        strengths[name][0, head] = u
    processors = {name: layout.processor(name) for name in names}
    with torch.no_grad():
        eps_c = transformer(**{k: v[1] for k, v in rows.items()})[0]
        with CallScope(PerturbationState("joint", strengths), "test").processors(
            transformer, processors, layout.replaceable
        ):
            eps_u = transformer(**{k: v[0] for k, v in rows.items()})[0]
    torch.testing.assert_close(seen["output"], torch.cat([eps_u, eps_c]), atol=1e-6, rtol=0)
    sigmas = sd3.scheduler.sigmas
    guided = eps_u + 4.0 * (eps_c - eps_u)
    expected = inputs["hidden_states"][:1] + (sigmas[1] - sigmas[0]) * guided
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)  # float32 rounding of the step


def test_uncond_branch_runs_two_branches_and_u0_is_plain_cfg(sd3):
    call = dict(CALL, num_inference_steps=3, output_type="latent", guidance_scale=4.0)
    sizes = batch_sizes(sd3, "transformer_blocks.1.attn", **call, pag_heads=HEADS, pag_branch="uncond")
    assert sizes == [[2], [2], [2]]
    plain = latents(sd3)
    assert torch.equal(latents(sd3, pag_heads=HEADS, pag_branch="uncond", pag_strength=0.0), plain)
    assert not torch.equal(latents(sd3, pag_heads=HEADS, pag_branch="uncond"), plain)


def test_uncond_branch_on_a_separate_uncond_call():
    """Wan runs the uncond prediction as a second call: that call is perturbed, the cond call is not."""
    pipe, call = _family("wan"), _family_call("wan")
    perturbed: list[tuple[int, bool]] = []
    attention = pipe.transformer.get_submodule("blocks.0.attn1")

    def hook(module, args, kwargs):
        state = active_state()
        u = state.strengths.get("blocks.0.attn1")
        perturbed.append(bool(u is not None and u.any()))

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = pipe(generator=torch.Generator().manual_seed(0), **call, pag_heads="L0H0", pag_branch="uncond")[
            0
        ]
    finally:
        handle.remove()
    assert perturbed == [False, True] * 4
    plain = pipe(generator=torch.Generator().manual_seed(0), **call)[0]
    zero = pipe(generator=torch.Generator().manual_seed(0), **call, pag_heads="L0H0", pag_branch="uncond",
                pag_strength=0.0)[0]  # fmt: skip
    assert torch.equal(zero, plain) and not torch.equal(out, plain)


def test_modular_guider_equals_the_pipeline_with_every_and_uncond(sd3):
    from diffusers.modular_pipelines.stable_diffusion_3 import StableDiffusion3AutoBlocks

    modular = StableDiffusion3AutoBlocks().init_pipeline()
    modular.update_components(**{k: v for k, v in sd3.components.items() if v is not None})
    modular.set_progress_bar_config(disable=True)
    call = dict(CALL, negative_prompt="dark")
    for pag in (dict(pag_every=2), dict(pag_branch="uncond"), dict(pag_branch="uncond", pag_every=3)):
        modular.update_components(guider=SoftPAGGuidance(guidance_scale=4.0, pag_heads=HEADS, **pag))
        ours = modular(generator=torch.Generator().manual_seed(0), output="latents", **call)
        reference = sd3(generator=torch.Generator().manual_seed(0), output_type="latent", guidance_scale=4.0,
                        pag_heads=HEADS, **call, **pag).images  # fmt: skip
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0, msg=str(pag))


# -- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, 1001, None])
def test_bad_pag_every_is_refused_by_name(sd3, bad):
    with pytest.raises(SoftPAGError, match=r"pag_every=.*an integer in \[1, 1000\]"):
        latents(sd3, pag_heads=HEADS, pag_every=bad)


@pytest.mark.parametrize("bad", ["both", "UNCOND", None, 1])
def test_bad_pag_branch_is_refused_by_name(bad):
    with pytest.raises(SoftPAGError, match=r"pag_branch=.* is not supported; allowed: 'cond' or 'uncond'"):
        SoftPAGConfig(HEADS, branch=bad)


def test_uncond_branch_refusals(sd3):
    with pytest.raises(
        SoftPAGError, match=r"pag_branch='uncond' needs CFG \(guidance_scale=1.0 turns CFG off\)"
    ):
        latents(sd3, guidance_scale=1.0, pag_heads=HEADS, pag_branch="uncond")
    with pytest.raises(SoftPAGError, match="pag_scale=2.0 has no effect with pag_branch='uncond'"):
        latents(sd3, pag_heads=HEADS, pag_branch="uncond", pag_scale=2.0)
    with pytest.raises(SoftPAGError, match="pag_branch='uncond' takes one head group, not 2"):
        latents(sd3, pag_heads="a: L1H0; b: L2H3", pag_branch="uncond")
    with pytest.raises(SoftPAGError, match="pag_branch='uncond' does not take pag_heads_per_image"):
        SoftPAGConfig(heads_per_image=["L1H0"], branch="uncond")
    with pytest.raises(SoftPAGError, match=r"needs CFG \(guidance_scale=1.0 turns it off\)"):
        SoftPAGGuidance(guidance_scale=1.0, pag_heads=HEADS, pag_branch="uncond")
    with pytest.raises(SoftPAGError, match="must lie inside the CFG window"):
        SoftPAGGuidance(guidance_scale=4.0, pag_heads=HEADS, pag_branch="uncond", stop=0.5)


def test_uncond_branch_without_an_uncond_prediction_is_refused():
    flux = HeadHunterPipeline.from_pipe(tiny_flux())
    flux.set_progress_bar_config(disable=True)
    call = dict(CALL, output_type="latent", num_inference_steps=2)
    with pytest.raises(SoftPAGError, match=r"needs CFG \(true_cfg_scale=1.0 turns CFG off\)"):
        flux(**call, pag_heads="L0H0", pag_branch="uncond")
    # true CFG asked for but no negative prompt: FLUX runs no uncond call; refused at the first step
    with pytest.raises(SoftPAGError, match="pag_branch='uncond': this call has no unconditional prediction"):
        flux(**call, true_cfg_scale=2.0, pag_heads="L0H0", pag_branch="uncond")
    with pytest.raises(SoftPAGError, match="HeadHunterFlux2Pipeline samples without CFG"):
        _family("flux2")(**_family_call("flux2"), pag_heads="L0H0", pag_branch="uncond")


# -- records -------------------------------------------------------------------------------------------------


def test_png_record_carries_every_and_branch_and_regenerates(sd3):
    call = dict(CALL, guidance_scale=4.0, seed=0)
    pag = dict(pag_heads=HEADS, pag_every=2, pag_branch="uncond")
    record = image_record("tiny", call, pag)
    assert record["pag_every"] == 2 and record["pag_branch"] == "uncond"
    again = record_call(record)
    assert again["pag_every"] == 2 and again["pag_branch"] == "uncond"
    made = latents(sd3, **pag)
    assert torch.equal(latents(sd3, **{k: v for k, v in again.items() if k not in CALL and k != "guidance_scale"}),
                       made)  # fmt: skip
    plain = image_record("tiny", call, dict(pag_heads=HEADS))
    assert "pag_every" not in plain and "pag_branch" not in plain  # defaults: records as before


def test_settings_describe_range_and_words():
    every, branch = SOFTPAG_SETTINGS["pag_every"], SOFTPAG_SETTINGS["pag_branch"]
    assert (every.default, every.low, every.high, every.flag) == (1, 1, 1000, "--pag-every")
    assert branch.choices == ("cond", "uncond") and "needs CFG" in branch.help
