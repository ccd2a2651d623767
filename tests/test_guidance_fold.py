"""The guidance fold: the parent's predictions stay pure; the PAG term reaches the final prediction exactly once.

final = uncond + w_cfg (cond - uncond) + sum_g w_g (cond - perturbed_g), plus what the parent adds from its
pure predictions (SD3 skip-layer guidance), with `guidance_rescale` as diffusers' PAG pipelines apply it. The
references are computed by hand from the denoiser's branch outputs, recorded in the same call.
"""

from __future__ import annotations

import re

import diffusers
import numpy as np
import pytest
import torch

from guidance.layouts import layout_of

CALL = dict(num_inference_steps=4, height=32, width=32, output_type="np")


def generate(pipe, seed=0, prompt="a red circle on the left", **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**CALL, **kwargs}).images


class Recorder:
    """Records each denoiser call's raw output (with the perturbed rows, before the fold) and what reaches
    `scheduler.step`; `steps()` groups the calls of each step."""

    def __init__(self, denoiser, scheduler, monkeypatch):
        self.calls: list[tuple[dict, torch.Tensor]] = []
        self.received: list[tuple[int, torch.Tensor]] = []
        self.handles = [
            denoiser.register_forward_pre_hook(self._before, with_kwargs=True),
            denoiser.register_forward_hook(self._after, with_kwargs=True),
        ]
        original = type(scheduler).step

        def step(sched, model_output, *args, **kwargs):
            self.received.append((len(self.calls), model_output.detach().clone()))
            return original(sched, model_output, *args, **kwargs)

        monkeypatch.setattr(type(scheduler), "step", step)
        self._pending: dict = {}

    def _before(self, module, args, kwargs):
        self._pending = {
            "skip_layers": kwargs.get("skip_layers"),
            "encoder": kwargs.get("encoder_hidden_states"),
        }

    def _after(self, module, args, kwargs, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.calls.append((self._pending, sample.detach().clone()))

    def steps(self):
        """[(calls of the step, model_output received by scheduler.step)]."""
        grouped, start = [], 0
        for end, received in self.received:
            grouped.append((self.calls[start:end], received))
            start = end
        return grouped

    def close(self):
        for handle in self.handles:
            handle.remove()


def test_sd3_skip_layer_guidance_adds_to_the_pure_cond(loaded, monkeypatch):
    """Inside the SLG window: uncond + w (cond - uncond) + s (cond - skip) + w_pag (cond - perturbed)."""
    pipe = loaded("sd3")
    w, s, w_pag = 5.0, 2.8, 2.0
    recorder = Recorder(pipe.transformer, pipe.scheduler, monkeypatch)
    try:
        generate(
            pipe, guidance_scale=w, skip_guidance_layers=[1], skip_layer_guidance_scale=s,
            skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0,
            pag_heads="L2H0,L2H1", pag_scale=w_pag, pag_strength=0.7,
        )  # fmt: skip
    finally:
        recorder.close()
    with_skip = 0
    for calls, received in recorder.steps():
        (_, main), *rest = calls
        uncond, cond, perturbed = main.chunk(3)
        expected = uncond + w * (cond - uncond) + w_pag * (cond - perturbed)
        if rest:
            (info, skip), = rest  # fmt: skip
            assert info["skip_layers"] == [1]
            expected = expected + s * (cond - skip)
            with_skip += 1
        torch.testing.assert_close(received, expected, atol=1e-5, rtol=1e-5)
    assert with_skip >= 2, "the SLG window must cover some steps"


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_guidance_rescale_equals_diffusers_pag_pipelines(name, loaded, tiny_folder):
    """SD / SDXL with guidance_rescale = diffusers' PAG pipelines on the same layer, image identity (1e-5)."""
    pipe = loaded(name)
    site = layout_of(pipe.unet).sites[1, "attn"]
    parent = {"sd15": diffusers.StableDiffusionPAGPipeline, "sdxl": diffusers.StableDiffusionXLPAGPipeline}[
        name
    ]
    reference = parent.from_pretrained(tiny_folder(name), pag_applied_layers=[f"^{re.escape(site.name)}$"])
    reference.set_progress_bar_config(disable=True)
    heads = ",".join(f"L1H{h}" for h in range(site.heads))
    for rescale in (0.0, 0.7):
        kwargs = dict(guidance_scale=5.0, guidance_rescale=rescale)
        ref = generate(reference, pag_scale=2.0, pag_adaptive_scale=0.0, **kwargs)
        ours = generate(pipe, pag_heads=heads, pag_scale=2.0, pag_identity="image", **kwargs)
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        assert np.abs(ours - generate(pipe, **kwargs)).max() > 1e-3


def test_heun_images_per_prompt_and_generator_lists_agree_with_one_by_one(loaded):
    """Heun's second evaluation, num_images_per_prompt > 1 and generator lists: each image equals its own run."""
    pipe = loaded("sd15")
    original = pipe.scheduler
    pipe.scheduler = diffusers.HeunDiscreteScheduler.from_config(original.config)
    try:
        kwargs = dict(pag_heads="L0H0,L2H1", pag_strength=0.6, guidance_rescale=0.5)
        gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5, 6)]
        batch = pipe(
            ["a red circle", "a blue square"], generator=gens, num_images_per_prompt=2, **CALL, **kwargs
        )
        for i, (prompt, seed) in enumerate(zip(["a red circle"] * 2 + ["a blue square"] * 2, (3, 4, 5, 6))):
            alone = generate(pipe, seed=seed, prompt=prompt, **kwargs)
            np.testing.assert_allclose(batch.images[i : i + 1], alone, atol=1e-5)
    finally:
        pipe.scheduler = original


# -- FLUX: which call is cond, and whether true CFG is on, exactly as FluxPipeline decides ----------------


def _flux_reference(recorder, w_pag, true_cfg):
    """Compare each step's received prediction with the hand-computed one; returns how many had true CFG."""
    with_cfg = 0
    for calls, received in recorder.steps():
        (_, main), *rest = calls
        cond, perturbed = main.chunk(2)
        guided = cond
        if rest:
            (_, negative), = rest  # fmt: skip
            guided = negative + true_cfg * (cond - negative)
            with_cfg += 1
        torch.testing.assert_close(received, guided + w_pag * (cond - perturbed), atol=1e-5, rtol=1e-5)
    return with_cfg


@pytest.mark.parametrize(
    "case",
    ["negative keyword", "negative positional", "embeds with pooled", "true_cfg_scale 1"],
)
def test_flux_true_cfg_decided_as_flux_pipeline_does(case, loaded, monkeypatch):
    pipe = loaded("flux")
    embeds, pooled, _ = pipe.encode_prompt("green", prompt_2=None, max_sequence_length=16)
    args, kwargs, cfg_on = (), dict(true_cfg_scale=2.5), True
    if case == "negative keyword":
        kwargs["negative_prompt"] = "green"
    elif case == "negative positional":
        args = (None, "green")  # FluxPipeline(prompt, prompt_2, negative_prompt, ...)
    elif case == "embeds with pooled":
        kwargs.update(negative_prompt_embeds=embeds, negative_pooled_prompt_embeds=pooled)
    else:
        kwargs.update(negative_prompt="green", true_cfg_scale=1.0)
        cfg_on = False
    recorder = Recorder(pipe.transformer, pipe.scheduler, monkeypatch)
    try:
        pipe("a red circle", *args, generator=torch.Generator().manual_seed(0), max_sequence_length=16,
             pag_heads="L1H0,L3H1", pag_scale=2.0, **CALL, **kwargs)  # fmt: skip
    finally:
        recorder.close()
    with_cfg = _flux_reference(recorder, 2.0, kwargs["true_cfg_scale"])
    assert with_cfg == (CALL["num_inference_steps"] if cfg_on else 0)


def test_flux_negative_embeds_without_pooled_are_refused_as_flux_pipeline_does(loaded):
    """diffusers 0.42 refuses negative_prompt_embeds without negative_pooled_prompt_embeds; so do we (no guess)."""
    pipe = loaded("flux")
    embeds, _, _ = pipe.encode_prompt("green", prompt_2=None, max_sequence_length=16)
    with pytest.raises(ValueError, match="negative_pooled_prompt_embeds"):
        generate(
            pipe, negative_prompt_embeds=embeds, true_cfg_scale=2.5, max_sequence_length=16, pag_heads="L1H0"
        )


def test_flux_callback_with_new_prompt_embeds_keeps_softpag(loaded):
    """A callback that returns new prompt_embeds (FLUX allows it) must not switch SoftPAG off."""
    pipe = loaded("flux")

    def fresh_embeds(pipeline, step, timestep, callback_kwargs):
        return {"prompt_embeds": callback_kwargs["prompt_embeds"].clone()}

    kwargs = dict(negative_prompt="green", true_cfg_scale=2.5, max_sequence_length=16, pag_heads="L1H0,L3H1")
    plain_callback = generate(
        pipe,
        **kwargs,
        callback_on_step_end=fresh_embeds,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )
    np.testing.assert_allclose(plain_callback, generate(pipe, **kwargs), atol=1e-6)
    unguided = generate(pipe, **{k: v for k, v in kwargs.items() if k != "pag_heads"})
    assert np.abs(plain_callback - unguided).max() > 1e-3


def test_flux_processors_use_the_configured_attention_backend(loaded, monkeypatch):
    """`set_attention_backend` reaches dispatch_attention_fn through our processors (and is restored)."""
    import guidance.processors as processors

    pipe = loaded("flux")
    seen = []
    real = processors.dispatch_attention_fn

    def spy(*args, **kwargs):
        seen.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    monkeypatch.setattr(processors, "dispatch_attention_fn", spy)
    pipe.transformer.set_attention_backend("_native_math")
    try:
        generate(pipe, pag_heads="L1H0", max_sequence_length=16)
    finally:
        pipe.transformer.reset_attention_backend()
    assert seen and all(str(getattr(b, "value", b)) == "_native_math" for b in seen), set(map(str, seen))
