"""SoftPAGGuidance in diffusers' modular pipelines: equal to the classic pipeline, serialisable, backend-proof."""

import pytest
import torch
from diffusers.guiders import PerturbedAttentionGuidance
from diffusers.modular_pipelines.stable_diffusion_3 import StableDiffusion3AutoBlocks

from fixtures.tiny import tiny_sd3
from fixtures.tiny_families import tiny_qwenimage
from guidance.config import SoftPAGError
from guidance.generic import generic_layout
from guidance.guider import SoftPAGGuidance
from guidance.processors import active_state
from pipelines.headhunter import HeadHunterPipeline

# An explicit negative prompt: with none, modular SD3 0.42.1 encodes "" differently from StableDiffusion3Pipeline.
CALL = dict(
    prompt="a red circle",
    negative_prompt="dark",
    num_inference_steps=3,
    height=32,
    width=32,
    max_sequence_length=8,
)


@pytest.fixture(scope="module")
def pipes():
    """(classic HeadHunter SD3 pipeline, StableDiffusion3ModularPipeline) sharing one tiny model."""
    classic = HeadHunterPipeline.from_pipe(tiny_sd3())
    classic.set_progress_bar_config(disable=True)
    modular = StableDiffusion3AutoBlocks().init_pipeline()
    modular.update_components(**{k: v for k, v in classic.components.items() if v is not None})
    return classic, modular


def _modular(modular, guider, seed=0):
    modular.update_components(guider=guider)
    modular.set_progress_bar_config(disable=True)
    return modular(generator=torch.Generator().manual_seed(seed), output="latents", **CALL)


def _classic(classic, seed=0, **pag):
    return classic(generator=torch.Generator().manual_seed(seed), output_type="latent", **CALL, **pag).images


@pytest.mark.parametrize(
    "pag",
    [
        dict(pag_heads="L1H0,L2H3", pag_scale=3.0),
        dict(pag_heads="L0H1=0.5,L3H2", pag_scale=2.0, pag_identity="image", pag_stop=0.5),
    ],
    ids=["joint", "image-window"],
)
def test_modular_sd3_equals_classic_pipeline(pipes, pag):
    classic, modular = pipes
    ours = _modular(modular, SoftPAGGuidance(guidance_scale=5.0, **pag))
    reference = _classic(classic, guidance_scale=5.0, **pag)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    plain = _modular(modular, SoftPAGGuidance(guidance_scale=5.0))
    assert (ours - plain).abs().max() > 1e-3


def test_modular_sd3_without_cfg_equals_classic(pipes):
    classic, modular = pipes
    ours = _modular(modular, SoftPAGGuidance(guidance_scale=1.0, pag_heads="L2H1", pag_scale=2.0))
    torch.testing.assert_close(ours, _classic(classic, guidance_scale=1.0, pag_heads="L2H1", pag_scale=2.0),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_guider_config_round_trip(tmp_path):
    guider = SoftPAGGuidance(guidance_scale=4.0, pag_heads="L1H10,L5H3=0.5", pag_scale=2.5, pag_strength=0.5,
                             pag_identity="image", pag_start=0.1, pag_stop=0.8)  # fmt: skip
    guider.save_pretrained(tmp_path)
    loaded = SoftPAGGuidance.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(guider.config)
    assert loaded.softpag == guider.softpag and guider.new(pag_scale=1.0).softpag.scale == 1.0
    with pytest.raises(SoftPAGError, match="pag_identity"):
        SoftPAGGuidance(pag_heads="L1H0", pag_identity="diagonal")


def test_processors_restored_when_the_perturbed_call_raises(pipes):
    _, modular = pipes
    transformer = modular.transformer
    before = {name: p for name, p in transformer.attn_processors.items()}

    def fail_when_perturbed(module, args, kwargs):
        state = active_state()
        if state is not None and state.strengths:
            raise RuntimeError("perturbed call failed")

    handle = transformer.transformer_blocks[0].register_forward_pre_hook(
        fail_when_perturbed, with_kwargs=True
    )
    try:
        with pytest.raises(RuntimeError, match="perturbed call failed"):
            _modular(modular, SoftPAGGuidance(guidance_scale=5.0, pag_heads="L1H0"))
    finally:
        handle.remove()
    assert all(transformer.attn_processors[k] is v for k, v in before.items())
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks and active_state() is None


# -- attention backends --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen():
    """A tiny Qwen-Image transformer and one input batch (its processor is registered for diffusers' PAG)."""
    transformer = tiny_qwenimage().transformer
    torch.manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 6, 16),
                  encoder_hidden_states_mask=torch.ones(1, 6), timestep=torch.tensor([0.5]),
                  img_shapes=[[(1, 4, 4)]])  # fmt: skip
    return transformer, inputs


def _perturbed_minus_plain(guider, transformer, inputs, backend) -> float:
    """Max |perturbed - plain| of one forward under `backend`, the guider preparing the perturbed (last) batch."""
    transformer.set_attention_backend(backend)
    try:
        with torch.no_grad():
            plain = transformer(**inputs).sample
            guider.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(500))
            for _ in range(guider.num_conditions - 1):  # the cond and uncond batches come first
                guider.prepare_models(transformer)
                guider.cleanup_models(transformer)
            guider.prepare_models(transformer)
            perturbed = transformer(**inputs).sample
            guider.cleanup_models(transformer)
        return float((perturbed - plain).abs().max())
    finally:
        transformer.set_attention_backend("native")


def test_diffusers_pag_perturbs_nothing_under_another_backend_ours_does(qwen):
    """diffusers' PerturbedAttentionGuidance intercepts torch SDPA only: under the "flex" attention backend it
    silently returns the unperturbed prediction. SoftPAGGuidance perturbs under both, with the same result."""
    transformer, inputs = qwen
    theirs = PerturbedAttentionGuidance(perturbed_guidance_layers=[0], perturbed_guidance_start=0.0,
                                        perturbed_guidance_stop=1.0)  # fmt: skip
    assert _perturbed_minus_plain(theirs, transformer, inputs, "native") > 1e-3
    assert _perturbed_minus_plain(theirs, transformer, inputs, "flex") == 0.0  # silently nothing

    ours = SoftPAGGuidance(pag_heads=",".join(f"L0H{h}" for h in range(3)), pag_identity="joint")
    assert _perturbed_minus_plain(ours, transformer, inputs, "native") > 1e-3
    assert _perturbed_minus_plain(ours, transformer, inputs, "flex") > 1e-3
    assert all(type(p).__name__ != "GenericAttnProcessor" for p in transformer.attn_processors.values())
    assert generic_layout(transformer).arch == "qwenimage"


# -- other modular families ----------------------------------------------------------------------------------


def _without_text_encoder(blocks, classic):
    """A modular pipeline of `blocks` minus its text-encoder step (Wan's needs ftfy, Qwen's a Qwen2.5-VL
    tokenizer; neither is available offline), with the classic pipeline's components."""
    blocks.sub_blocks.pop("text_encoder")
    modular = blocks.init_pipeline()
    modular.update_components(**{k: v for k, v in classic.components.items() if v is not None})
    modular.set_progress_bar_config(disable=True)
    return modular


def test_modular_wan_equals_classic_pipeline():
    from diffusers.modular_pipelines.wan.modular_blocks_wan import WanBlocks

    from fixtures.tiny_families import tiny_wan
    from pipelines.families import HeadHunterWanPipeline

    classic = HeadHunterWanPipeline.from_pipe(tiny_wan())
    classic.set_progress_bar_config(disable=True)
    modular = _without_text_encoder(WanBlocks(), classic)
    embeds, negative = classic.encode_prompt("a red circle", "dark", max_sequence_length=8)
    call = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=2, height=16, width=16,
                num_frames=5)  # fmt: skip
    modular.update_components(
        guider=SoftPAGGuidance(guidance_scale=3.0, pag_heads="L1H0,L0H1", pag_scale=2.0)
    )
    ours = modular(generator=torch.Generator().manual_seed(0), output="latents", **call)
    reference = classic(generator=torch.Generator().manual_seed(0), output_type="latent", guidance_scale=3.0,
                        pag_heads="L1H0,L0H1", pag_scale=2.0, **call).frames  # fmt: skip
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_modular_qwenimage_runs_and_perturbs():
    """QwenImageModularPipeline rescales the guider's whole prediction to the cond norm, PAG term included (the
    classic pipeline rescales CFG only and adds the PAG term after): equal to the classic one with CFG only."""
    from diffusers.modular_pipelines.qwenimage.modular_blocks_qwenimage import QwenImageAutoBlocks

    from fixtures.tiny_families import prompt_embeds_for, tiny_qwenimage
    from pipelines.families import HeadHunterQwenImagePipeline

    classic = HeadHunterQwenImagePipeline.from_pipe(tiny_qwenimage())
    classic.set_progress_bar_config(disable=True)
    modular = _without_text_encoder(QwenImageAutoBlocks(), classic)
    negative = prompt_embeds_for("qwenimage", seed=1)
    call = dict(**prompt_embeds_for("qwenimage"), negative_prompt_embeds=negative["prompt_embeds"],
                negative_prompt_embeds_mask=negative["prompt_embeds_mask"], num_inference_steps=2, height=16,
                width=16)  # fmt: skip
    outputs = {}
    for heads in (None, "L1H0"):
        modular.update_components(guider=SoftPAGGuidance(guidance_scale=2.0, pag_heads=heads, pag_scale=2.0))
        outputs[heads] = modular(generator=torch.Generator().manual_seed(0), output="latents", **call)
    reference = classic(generator=torch.Generator().manual_seed(0), output_type="latent", true_cfg_scale=2.0,
                        **call).images  # fmt: skip
    reference = classic._unpack_latents(reference, 16, 16, classic.vae_scale_factor)
    torch.testing.assert_close(outputs[None], reference, atol=1e-5, rtol=0)
    assert (outputs["L1H0"] - outputs[None]).abs().max() > 1e-3


def test_modular_zimage_equals_classic_pipeline():
    """Z-Image's classic loop computes cond + s (cond - uncond), i.e. CFG scale s + 1 in the guider's form, and
    hands the scheduler the negated output; the modular loop negates before the guider. Both agree with SoftPAG."""
    from diffusers.modular_pipelines.z_image.modular_blocks_z_image import ZImageAutoBlocks

    from fixtures.tiny_families import prompt_embeds_for, tiny_zimage
    from pipelines.families import HeadHunterZImagePipeline

    classic = HeadHunterZImagePipeline.from_pipe(tiny_zimage())
    classic.set_progress_bar_config(disable=True)
    modular = _without_text_encoder(ZImageAutoBlocks(), classic)
    call = dict(**prompt_embeds_for("zimage"), negative_prompt_embeds=prompt_embeds_for("zimage", seed=1)["prompt_embeds"],
                num_inference_steps=2, height=32, width=32)  # fmt: skip
    modular.update_components(
        guider=SoftPAGGuidance(guidance_scale=3.0, pag_heads="L1H0,L0H1", pag_scale=2.0)
    )
    ours = modular(generator=torch.Generator().manual_seed(0), output="latents", **call)
    reference = classic(generator=torch.Generator().manual_seed(0), output_type="latent", guidance_scale=2.0,
                        pag_heads="L1H0,L0H1", pag_scale=2.0, **call).images  # fmt: skip
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
