"""HeadHunter pipelines on tiny random models: equivalences, batching, restoration and errors."""

import json
import logging
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, JointAttnProcessor2_0

from guidance.config import SoftPAGError
from guidance.heads import HeadSelectionError
from guidance.layouts import layout_of
from guidance.processors import PerturbationState, perturbing
from pipelines.headhunter import HeadHunterPipeline, pipeline_class
from pipelines.loading import absent_components, model_index

PARENTS = {
    "sd3": "StableDiffusion3Pipeline",
    "sd35": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
CALL = dict(num_inference_steps=3, height=32, width=32, output_type="np")
ALL_HEADS = {"sd3": 4, "sd35": 4, "flux": 2, "sd15": 2, "sdxl": 2}


def generate(pipe, seed=0, prompt="a red circle on the left", **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**CALL, **kwargs}).images


def _parent(tiny_folder, name):
    folder = tiny_folder(name)
    cls = getattr(diffusers, PARENTS[name])
    return cls.from_pretrained(folder, **absent_components(cls, model_index(folder)))


@pytest.mark.parametrize("name", sorted(PARENTS))
def test_dispatch_and_zero_strength_equals_plain_diffusers(name, loaded, tiny_folder):
    pipe = loaded(name)
    assert type(pipe) is pipeline_class(PARENTS[name])
    plain = generate(_parent(tiny_folder, name))
    heads = ",".join(f"L1H{h}" for h in range(ALL_HEADS[name]))
    ours = generate(pipe, pag_heads=heads, pag_strength=0.0, pag_scale=3.0)
    # Extra batch rows may change float summation order: 1e-5 on [0, 1] images.
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    guided = generate(pipe, pag_heads=heads, pag_strength=1.0, pag_scale=3.0)
    assert np.abs(guided - plain).max() > 1e-3, "u = 1 must change the image"


@pytest.mark.parametrize("name", ["sd3", "sd35", "flux"])
def test_shared_prefix_equals_full_batch(name, loaded):
    pipe = loaded(name)
    for identity in ("joint", "image"):
        kwargs = dict(pag_heads="L2H0,L2H1=0.5,L3H1", pag_identity=identity)
        shared = generate(pipe, **kwargs)
        full = generate(pipe, pag_shared_prefix=False, **kwargs)
        np.testing.assert_allclose(shared, full, atol=1e-5)


def test_image_identity_equals_diffusers_pag_sd3(tiny_folder, loaded):
    """`image`, u = 1 on all heads of layers 1 and 2 = StableDiffusion3PAGPipeline on those layers (1e-5)."""
    folder = tiny_folder("sd3")
    layers = [r"^transformer_blocks\.1\.attn$", r"^transformer_blocks\.2\.attn$"]
    pag = diffusers.StableDiffusion3PAGPipeline.from_pretrained(
        folder, text_encoder_3=None, tokenizer_3=None, pag_applied_layers=layers
    )
    for guidance_scale in (1.0, 5.0):
        ref = generate(pag, guidance_scale=guidance_scale, pag_scale=2.0, pag_adaptive_scale=0.0)
        ours = generate(
            loaded("sd3"), guidance_scale=guidance_scale, pag_heads="L1H0,L1H1,L1H2,L1H3,L2H0,L2H1,L2H2,L2H3",
            pag_scale=2.0, pag_identity="image",
        )  # fmt: skip
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        assert np.abs(ours - generate(loaded("sd3"), guidance_scale=guidance_scale)).max() > 1e-3


@pytest.mark.parametrize("name", ["sd3", "flux", "sd15"])
def test_rows_with_different_heads_equal_rows_one_by_one(name, loaded):
    """One batch whose rows perturb different heads equals running each row alone (1e-5)."""
    pipe = loaded(name)
    denoiser = pipe.unet if name == "sd15" else pipe.transformer
    layout = layout_of(denoiser)
    sites = [layout.sites[1, "attn"], layout.sites[len(layout.sites) - 1, "attn"]]
    strengths = [
        torch.tensor([[0.0] * s.heads, [1.0] + [0.0] * (s.heads - 1), [0.3] * s.heads]) for s in sites
    ]
    torch.manual_seed(0)
    if name == "sd15":
        inputs = dict(sample=torch.randn(3, 4, 16, 16), timestep=torch.tensor(500),
                      encoder_hidden_states=torch.randn(3, 77, 32))  # fmt: skip
    elif name == "flux":
        inputs = dict(hidden_states=torch.randn(3, 64, 16), encoder_hidden_states=torch.randn(3, 7, 32),
                      pooled_projections=torch.randn(3, 32), timestep=torch.full((3,), 0.5),
                      img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(7, 3))  # fmt: skip
    else:
        inputs = dict(hidden_states=torch.randn(3, 4, 16, 16), encoder_hidden_states=torch.randn(3, 77, 64),
                      pooled_projections=torch.randn(3, 64), timestep=torch.full((3,), 500.0))  # fmt: skip
    state = PerturbationState(text_tokens=7)
    originals = {s.name: denoiser.get_submodule(s.name).processor for s in sites}
    for s in sites:
        denoiser.get_submodule(s.name).set_processor(layout.processor(s.name))
    try:
        with torch.no_grad(), perturbing(state):
            state.strengths = {s.name: u for s, u in zip(sites, strengths, strict=True)}
            together = denoiser(**inputs, return_dict=False)[0]
            for row in range(3):
                one = {k: (v[row : row + 1] if k not in ("timestep", "img_ids", "txt_ids") or v.ndim and v.shape[0] == 3
                           else v) for k, v in inputs.items()}  # fmt: skip
                state.strengths = {s.name: u[row : row + 1] for s, u in zip(sites, strengths, strict=True)}
                alone = denoiser(**one, return_dict=False)[0]
                torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=1e-5)
    finally:
        for n, p in originals.items():
            denoiser.get_submodule(n).set_processor(p)


def test_groups_scales_and_window(loaded):
    pipe = loaded("sd3")
    plain = generate(pipe)
    # No step inside the window: the perturbed branch never runs.
    np.testing.assert_array_equal(generate(pipe, pag_heads="L1H0", pag_start=0.9, pag_stop=1.0), plain)
    # Two groups with scales (w, 0) equal one group with w.
    one = generate(pipe, pag_heads="L1H0,L2H1", pag_scale=2.0)
    two = generate(pipe, pag_heads="a: L1H0, L2H1; b: L3H2", pag_scale=[2.0, 0.0])
    np.testing.assert_allclose(one, two, atol=1e-5)
    assert np.abs(generate(pipe, pag_heads="a: L1H0, L2H1; b: L3H2", pag_scale=[2.0, 1.0]) - one).max() > 1e-4


def test_flux_true_cfg_and_negative_prompt(loaded, tiny_folder):
    pipe = loaded("flux")
    plain = generate(_parent(tiny_folder, "flux"), negative_prompt="blue", true_cfg_scale=4.0)
    ours = generate(pipe, negative_prompt="blue", true_cfg_scale=4.0, pag_heads="L1H0,L1H1", pag_strength=0.0)
    np.testing.assert_allclose(ours, plain, atol=1e-5)


def test_processors_restored_after_exception_and_user_processors_kept(loaded):
    pipe = loaded("sd3")
    mine = JointAttnProcessor2_0()
    pipe.transformer.transformer_blocks[0].attn.set_processor(mine)
    before = dict(pipe.transformer.attn_processors)

    def boom(pipeline, step, timestep, callback_kwargs):
        assert (
            type(pipeline.transformer.transformer_blocks[2].attn.processor).__name__
            == "SoftPAGJointAttnProcessor"
        )
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        generate(pipe, pag_heads="L2H0", callback_on_step_end=boom)
    assert pipe.transformer.attn_processors == before
    assert pipe.transformer.transformer_blocks[0].attn.processor is mine
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer._forward_hooks


def test_foreign_processor_is_an_error_not_a_silent_noop(loaded):
    pipe = loaded("sd3")
    block = pipe.transformer.transformer_blocks[1].attn
    original = block.processor
    block.set_processor(AttnProcessor())  # stands in for an xformers / IP-Adapter replacement
    try:
        with pytest.raises(SoftPAGError, match="transformer_blocks.1.attn uses AttnProcessor"):
            generate(pipe, pag_heads="L1H0")
    finally:
        block.set_processor(original)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            dict(pag_heads="L9H0"),
            HeadSelectionError,
            r"pag_heads: entry L9H0: layer 9 is out of range.*0\.\.3",
        ),
        (dict(pag_heads="L1H7"), HeadSelectionError, r"head 7 is out of range; layer 1 has heads 0\.\.3"),
        (dict(pag_heads="L1H0", pag_strength=2.0), SoftPAGError, r"pag_strength=2.0 is out of range"),
        (dict(pag_heads="L1H0", pag_identity="text"), SoftPAGError, r"pag_identity='text'"),
        (dict(pag_heads="L1H0", pag_start=0.5, pag_stop=0.2), SoftPAGError, r"pag_start=0.5 must be below"),
        (
            dict(pag_heads="L1H0", pag_scale=[1.0, 2.0]),
            SoftPAGError,
            r"pag_scale has 2 values for 1 head groups",
        ),
        (
            dict(pag_heads="L1H0", pag_scale=float("nan")),
            SoftPAGError,
            r"pag_scale=nan must be a finite number",
        ),
        (
            dict(pag_heads="L0H0/attn2"),
            HeadSelectionError,
            r"addresses 'attn2', which this model does not have",
        ),
    ],
)
def test_bad_input_errors_name_the_parameter(loaded, kwargs, error, message):
    with pytest.raises(error, match=message):
        generate(loaded("sd3"), **kwargs)


def test_sd35_attn2_only_when_selected(loaded):
    pipe = loaded("sd35")
    plain = generate(pipe)
    assert np.abs(generate(pipe, pag_heads="L0H0/attn2,L0H1/attn2") - plain).max() > 1e-4


def test_presets_from_pipe_and_save_pretrained(loaded, tmp_path, tiny_folder):
    pipe = loaded("sd3")
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"groups": [{"name": "q", "scale": 2.0, "heads": ["L1H0", "L2H3=0.5"]}]}))
    np.testing.assert_allclose(
        generate(pipe, pag_heads=str(preset)),
        generate(pipe, pag_heads="L1H0,L2H3=0.5", pag_scale=2.0),
        atol=1e-6,
    )
    wrapped = HeadHunterPipeline.from_pipe(_parent(tiny_folder, "sd3"))
    assert type(wrapped) is type(pipe)
    pipe.save_pretrained(tmp_path / "saved")
    assert (
        json.loads((tmp_path / "saved" / "model_index.json").read_text())["_class_name"]
        == "HeadHunterSD3Pipeline"
    )
    assert type(HeadHunterPipeline.from_pretrained(tmp_path / "saved")) is type(pipe)


def test_generator_lists_and_images_per_prompt(loaded):
    pipe = loaded("sd3")
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    batch = pipe(["a red circle", "a blue square"], generator=gens, pag_heads="L1H0", **CALL).images
    single = generate(pipe, seed=2, prompt="a blue square", pag_heads="L1H0")
    np.testing.assert_allclose(batch[1:], single, atol=1e-5)
    many = generate(pipe, pag_heads="L1H0", num_images_per_prompt=3)
    assert many.shape == (3, 32, 32, 3)


def test_unsupported_pipeline_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match="does not support 'KandinskyPipeline'"):
        HeadHunterPipeline.from_pretrained(tmp_path)


def test_flux_guidance_distilled(tmp_path):
    """FLUX.1-dev style: the distilled guidance embedding is expanded with the perturbed rows."""
    from fixtures.tiny import tiny_flux

    tiny_flux(guidance_embeds=True).save_pretrained(tmp_path)
    pipe = HeadHunterPipeline.from_pretrained(tmp_path)
    plain = generate(diffusers.FluxPipeline.from_pretrained(tmp_path), guidance_scale=3.5)
    np.testing.assert_allclose(
        generate(pipe, guidance_scale=3.5, pag_heads="L3H0", pag_strength=0.0), plain, atol=1e-5
    )
    shared = generate(pipe, guidance_scale=3.5, pag_heads="L3H0,L4H1")
    full = generate(pipe, guidance_scale=3.5, pag_heads="L3H0,L4H1", pag_shared_prefix=False)
    np.testing.assert_allclose(shared, full, atol=1e-5)
    assert np.abs(shared - plain).max() > 1e-3


def test_sd3_skip_layer_guidance_composes(loaded, tiny_folder):
    """SD3's skip-layer guidance makes a second denoiser call per step; it must not get perturbed rows."""
    kwargs = dict(skip_guidance_layers=[1], skip_layer_guidance_scale=2.0, guidance_scale=5.0)
    plain = generate(_parent(tiny_folder, "sd3"), **kwargs)
    np.testing.assert_allclose(
        generate(loaded("sd3"), pag_heads="L2H0", pag_strength=0.0, **kwargs), plain, atol=1e-5
    )


def test_heun_scheduler_window(loaded):
    """Heun evaluates the model twice per step: both evaluations are perturbed inside the window."""
    from diffusers import HeunDiscreteScheduler

    pipe = loaded("sd15")
    original = pipe.scheduler
    pipe.scheduler = HeunDiscreteScheduler.from_config(original.config)
    try:
        plain = generate(pipe)
        np.testing.assert_allclose(generate(pipe, pag_heads="L0H0", pag_strength=0.0), plain, atol=1e-5)
        np.testing.assert_array_equal(generate(pipe, pag_heads="L0H0", pag_start=0.99), plain)
        assert np.abs(generate(pipe, pag_heads="L0H0,L0H1") - plain).max() > 1e-3
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_heads_per_image_equal_images_one_by_one(name, loaded):
    """Each image of a batch guided by its own heads equals that image generated alone (1e-5)."""
    pipe = loaded(name)
    selections = ["L1H0", "L1H1,L2H0=0.5", "L0H1"]
    seeds = [3, 4, 5]
    batch = pipe(["a red circle"] * 3, generator=[torch.Generator().manual_seed(s) for s in seeds],
                 pag_heads_per_image=selections, **CALL).images  # fmt: skip
    for image, heads, seed in zip(batch, selections, seeds, strict=True):
        np.testing.assert_allclose(image, generate(pipe, seed=seed, prompt="a red circle", pag_heads=heads)[0],
                                   atol=1e-5)  # fmt: skip
    with pytest.raises(
        SoftPAGError, match="pag_heads_per_image has 3 selections but the call generates 2 images"
    ):
        generate(pipe, pag_heads_per_image=selections, num_images_per_prompt=2)
    with pytest.raises(SoftPAGError, match="exactly one of pag_heads and pag_heads_per_image"):
        generate(pipe, pag_heads="L1H0", pag_heads_per_image=selections)
    with pytest.raises(HeadSelectionError, match=r"pag_heads_per_image\[1\]: entry L9H0"):
        generate(pipe, pag_heads_per_image=["L1H0", "L9H0"])


def test_preset_of_another_model_warns_on_same_shape_and_fails_on_another(loaded, tmp_path):
    """A preset records its model and layers x heads: same shape warns with both names, another shape fails."""
    pipe = loaded("sd3")
    layout = layout_of(pipe.transformer)
    shape = [layout.num_layers, max(layout.heads_per_layer["attn"].values())]
    preset = {"format": "headhunter-preset", "version": 1, "model": "stabilityai/stable-diffusion-3-medium-diffusers",
              "layers_x_heads": shape, "groups": [{"name": "g", "heads": ["L1H0"]}]}  # fmt: skip
    path = tmp_path / "medium.json"
    path.write_text(json.dumps(preset))
    with pytest.warns(
        UserWarning, match=r"found on stabilityai/stable-diffusion-3-medium-diffusers; the loaded model"
    ):
        generate(pipe, pag_heads=str(path))
    path.write_text(json.dumps({**preset, "layers_x_heads": [38, 38]}))
    with pytest.raises(
        HeadSelectionError, match=r"this preset is for stabilityai/stable-diffusion-3-medium-diffusers"
    ):
        generate(pipe, pag_heads=str(path))


# -- a model folder's recommended call: the defaults of `__call__` ------------------------------------------


def _sd3_with_t5(folder, recommended: dict | None):
    """A tiny SD3 with a tiny T5 (d_model = the transformer's joint dim) saved to `folder`, with a toyworld.json."""
    from transformers import T5Config, T5EncoderModel

    from fixtures.tiny import tiny_sd3
    from pipelines.tokenizers import t5_tokenizer

    pipe = tiny_sd3()
    torch.manual_seed(1)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer()), d_model=64, d_kv=8, d_ff=64, num_layers=1,
                                 num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))  # fmt: skip
    pipe.register_modules(text_encoder_3=t5.eval(), tokenizer_3=t5_tokenizer())
    pipe.save_pretrained(folder, safe_serialization=True)
    if recommended is not None:
        (folder / "toyworld.json").write_text(json.dumps({**recommended, "note": "ignored"}))
    return folder


RECOMMENDED = dict(num_inference_steps=3, guidance_scale=2.0, height=48, width=48, max_sequence_length=2)


def _steps_and_size(pipe, *args, **kwargs) -> tuple[int, tuple]:
    steps = []
    image = pipe(*args, callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw,
                 generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images[0]  # fmt: skip
    return len(steps), image.shape[:2]


class _Notices(logging.Handler):
    """The messages diffusers' loggers hand to their handlers (the library's stderr handler among them)."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def truncations(self) -> list[str]:
        found, self.messages = [m for m in self.messages if "truncated because" in m], []
        return found


def test_folder_recommended_call_is_the_default_and_explicit_arguments_win(tmp_path):
    """A folder's toyworld.json sets steps, size, CFG and the T5 length of a plain `pipe(prompt)`: its prompt cut
    to the trained T5 length gives no truncation notice; explicit arguments win; from_pipe keeps the defaults."""
    folder = _sd3_with_t5(tmp_path / "sd3", RECOMMENDED)
    pipe = HeadHunterPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert dict(pipe.recorded_call) == RECOMMENDED
    notices = _Notices()
    logging.getLogger("diffusers").addHandler(notices)
    try:
        assert _steps_and_size(pipe, "a red circle on the left") == (3, (48, 48))
        assert notices.truncations() == []
        assert _steps_and_size(pipe, "a red circle", num_inference_steps=2, height=32, width=32) == (
            2,
            (32, 32),
        )
        assert _steps_and_size(pipe, "a red circle", None, None, 32, 40) == (
            3,
            (32, 40),
        )  # height, width by position
        twin = HeadHunterPipeline.from_pipe(pipe)
        twin.set_progress_bar_config(disable=True)
        assert _steps_and_size(twin, "a red circle", pag_heads="L1H0") == (3, (48, 48))
        # The same image as the recommended call spelled out on a pipeline without the file.
        plain = HeadHunterPipeline.from_pretrained(_sd3_with_t5(tmp_path / "plain", None))
        plain.set_progress_bar_config(disable=True)
        assert dict(plain.recorded_call) == {}
        ours = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
        assert notices.truncations() == []
        spelled = plain("a red circle", generator=torch.Generator().manual_seed(0), output_type="np",
                        **RECOMMENDED).images  # fmt: skip
        np.testing.assert_array_equal(ours, spelled)
        assert len(notices.truncations()) == 1  # there the length is not one the model records: reported
    finally:
        logging.getLogger("diffusers").removeHandler(notices)
    # Without the file: the parent's defaults, as before (32 px from the tiny transformer's sample size).
    assert _steps_and_size(plain, "a red circle", num_inference_steps=1) == (1, (32, 32))


def test_folder_recommendations_are_checked(tmp_path, tiny_folder):
    """A bad toyworld.json is refused before the weights load, naming the folder, the file and the key."""
    import shutil

    from pipelines.loading import ModelFolderError, folder_recommendations

    folder = shutil.copytree(tiny_folder("sd3"), tmp_path / "sd3")
    assert folder_recommendations(folder) == {}
    (folder / "toyworld.json").write_text(json.dumps({"num_inference_steps": 0}))
    with pytest.raises(ModelFolderError, match=r"toyworld.json: num_inference_steps=0 is out of range"):
        folder_recommendations(folder)
    (folder / "toyworld.json").write_text('{"height": NaN}')
    with pytest.raises(ModelFolderError, match=r"sd3'?: toyworld.json: .*NaN"):
        HeadHunterPipeline.from_pretrained(folder)


def test_a_recorded_negative_prompt_follows_a_list_of_prompts():
    """toy-sd15 records negative_prompt "": with a list of prompts it is filled once per prompt (diffusers refuses a
    str negative prompt beside a list prompt), and each image equals that prompt's image alone."""
    root = Path(__file__).resolve().parent.parent
    pipe = HeadHunterPipeline.from_pretrained(root / "assets" / "toy-sd15")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.recorded_call["negative_prompt"] == ""
    call = dict(num_inference_steps=2, output_type="np")
    both = pipe(["a red square", "a blue circle"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                **call).images  # fmt: skip
    alone = pipe("a blue circle", generator=torch.Generator().manual_seed(1), **call).images
    assert both.shape[0] == 2
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)


def test_pag_settings_without_heads_warn_by_name_and_change_nothing(loaded):
    """SoftPAG is off without pag_heads: moved pag_* settings are named in a warning (never ignored silently), and
    the image is the plain one; a call leaving them at their defaults does not warn."""
    import warnings

    pipe = loaded("sd3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **CALL).images
    assert not [w for w in caught if "pag_heads" in str(w.message)]
    with pytest.warns(UserWarning, match=r"pag_scale=5\.0, pag_stop=0\.5: no effect without pag_heads"):
        moved = pipe(
            "a red circle", generator=torch.Generator().manual_seed(0), pag_scale=5.0, pag_stop=0.5, **CALL
        ).images
    np.testing.assert_array_equal(moved, plain)
