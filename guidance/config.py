"""One configuration object per technique: its defaults, its validation and its error messages.

Every front end derives from these: the pipelines' `pag_*` / `structured*` keyword defaults, `SoftPAGGuidance`'s,
the UpFusion pipeline's and `orbit`'s, the CLI flags, the batch job keys, the demo's inputs and the head search's
settings (`test_*_defaults_agree_on_every_surface` in `tests/test_architecture.py` fail if one drifts). A `Setting`
(`guidance.checks`, re-exported here with the other checks) describes one call argument (default, type, range,
help in plain words); `check` raises an error that names the parameter, the value and what is allowed, and is the
one check every surface uses (a front end passes its own error type and its own label; `narrowed` gives a front end
a part of the range, e.g. the demo's, kept small for responsiveness). `check_window` checks every step window
(start < stop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from guidance.checks import (  # noqa: F401 (GuidanceError, Setting and the checks are imported from here too)
    GuidanceError,
    Setting,
    check_finite,
    check_text,
    check_window,
    short_repr,
)
from guidance.heads import GROUP_SCALE, HEAD_STRENGTH, PRESET_SETTINGS, HeadSelection
from guidance.softpag import IDENTITIES

__all__ = [
    "GENERATION_SETTINGS", "GenerationConfig", "GenerationError", "GuidanceError", "SEARCH_SETTINGS",
    "SOFTPAG_SETTINGS", "STRUCTURED_SETTINGS", "Setting", "SoftPAGConfig", "SoftPAGError", "StructuredConfig",
    "StructuredError", "MAX_INPUT_VIEWS", "MAX_QUERY_CAMERAS", "UPFUSION_SETTINGS", "check_call_arguments",
    "check_finite", "check_text", "check_window",
]  # fmt: skip

STRUCTURED_MODES = ("key-value", "conjunction")
PAG_BRANCHES = ("cond", "uncond")


class GenerationError(GuidanceError):
    """Bad generation settings (prompt, steps, CFG, size, seed, image count, batch size)."""


class SoftPAGError(GuidanceError):
    """Bad SoftPAG settings, or processors that another feature replaced."""


class StructuredError(SoftPAGError):
    """Bad structured cross-attention settings (a SoftPAGError too, so one `except` covers both pipelines)."""


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


# -- SoftPAG ------------------------------------------------------------------------------------------------

SOFTPAG_SETTINGS = _settings(
    Setting("pag_heads", None, "text",
            help="Which attention heads to perturb, e.g. 'L2H1,L4H0' (layer 2 head 1, layer 4 head 0) or a "
                 "preset name. Empty: no head guidance."),
    replace(GROUP_SCALE, name="pag_scale", default=3.0,
            help="How strongly to steer away from the perturbed prediction (w). 0 = off; 1-3 is typical."),
    replace(HEAD_STRENGTH, name="pag_strength", default=1.0,
            help="How far each chosen head's attention is pulled toward 'look only at yourself' (u): "
                 "0 = untouched, 1 = fully."),
    Setting("pag_identity", "joint", "choice", choices=IDENTITIES,
            help="'joint': the head ignores image and text tokens alike (the paper's); 'image': only "
                 "image-to-image attention is replaced, text is still seen (diffusers' PAG)."),
    Setting("pag_start", 0.0, "number", 0, 1,
            help="Fraction of the sampling steps after which head guidance starts (0 = from the first step)."),
    Setting("pag_stop", 1.0, "number", 0, 1,
            help="Fraction of the sampling steps at which head guidance stops (1 = until the last step)."),
    Setting("pag_shared_prefix", True, "bool",
            help="Compute the blocks before the first perturbed layer once for the normal and the perturbed "
                 "branch (same result, faster)."),
    Setting("pag_every", 1, "integer", 1, 1000,
            help="Run the perturbed branch on every k-th step of the window only (its first step, then every "
                 "k-th); the steps between cost like CFG and reuse the last head-guidance term. 1 = every step."),
    Setting("pag_branch", "cond", "choice", choices=PAG_BRANCHES,
            help="'cond': perturb an extra copy of the prompt's branch (three branches with CFG, the paper's); "
                 "'uncond': perturb CFG's unconditional branch instead (two branches, the cost of CFG; needs "
                 "CFG; pag_scale is not used, guidance_scale sets the push)."),
)  # fmt: skip


def _default(name: str) -> Any:
    return SOFTPAG_SETTINGS[name].default


@dataclass(frozen=True)
class SoftPAGConfig:
    """Validated SoftPAG call settings (the pipelines' `pag_*` arguments); heads are parsed by `guidance.heads`.

    `scale` may be one number or one per head group; `heads_per_image` replaces `heads` with one selection per
    generated image (a head search's batch).

    `heads` is parsed here (`HeadSelection.parse`: notation, tuples, a preset path or a selection). A preset may
    recommend call settings (its "settings": `pag_every`, `pag_branch`, `pag_start`, `pag_stop`, `pag_identity`);
    they fill the arguments this call leaves at their defaults, and `from_preset` names the ones they filled. To
    use a preset's heads without its settings, pass `HeadSelection.load(path).without_settings()`."""

    heads: Any = _default("pag_heads")
    scale: float | Sequence[float] = _default("pag_scale")
    strength: float = _default("pag_strength")
    identity: str = _default("pag_identity")
    start: float = _default("pag_start")
    stop: float = _default("pag_stop")
    shared_prefix: bool = _default("pag_shared_prefix")
    heads_per_image: Sequence | None = None
    every: int = _default("pag_every")
    branch: str = _default("pag_branch")
    from_preset: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self):
        """Check every value; raise SoftPAGError naming the first bad one."""
        if (self.heads is None) == (self.heads_per_image is None):
            raise SoftPAGError("give exactly one of pag_heads and pag_heads_per_image")
        if self.heads is not None:
            object.__setattr__(self, "heads", HeadSelection.parse(self.heads))
            self._apply_preset_settings()
        for attribute in ("strength", "identity", "start", "stop", "shared_prefix", "every", "branch"):
            setting = SOFTPAG_SETTINGS[f"pag_{attribute}"]
            object.__setattr__(self, attribute, setting.check(getattr(self, attribute), SoftPAGError))
        check_window(self.start, self.stop, SoftPAGError, ("pag_start", "pag_stop"))
        scale = SOFTPAG_SETTINGS["pag_scale"]
        if isinstance(self.scale, Sequence) and not isinstance(self.scale, str):
            values = tuple(scale.check(s, SoftPAGError, f"pag_scale[{i}]") for i, s in enumerate(self.scale))
            if not values:
                raise SoftPAGError("pag_scale=[] must hold one number per head group")
            object.__setattr__(self, "scale", values)
        else:
            object.__setattr__(self, "scale", scale.check(self.scale, SoftPAGError))
        if self.branch == "uncond":
            self._check_uncond_branch()

    def _apply_preset_settings(self) -> None:
        """The preset's recommended settings, checked, on the arguments left at their defaults."""
        recommended = self.heads.metadata.get("settings") or {}
        filled = []
        for name in PRESET_SETTINGS:
            if name not in recommended:
                continue
            setting, attribute = SOFTPAG_SETTINGS[name], name.removeprefix("pag_")
            value = setting.check(recommended[name], SoftPAGError, f"pag_heads: the preset's settings.{name}")
            if getattr(self, attribute) == setting.default and value != setting.default:
                object.__setattr__(self, attribute, value)
                filled.append(name)
        object.__setattr__(self, "from_preset", tuple(filled))

    def _check_uncond_branch(self) -> None:
        """pag_branch='uncond' has no weight of its own (eps = eps_u~ + w_cfg (eps_c - eps_u~)): a chosen
        pag_scale would be dropped, so anything but its default is refused, as are per-image selections."""
        if self.heads_per_image is not None:
            raise SoftPAGError(
                "pag_branch='uncond' does not take pag_heads_per_image (one selection per image); use pag_heads"
            )
        if self.scale != _default("pag_scale"):
            raise SoftPAGError(
                f"pag_scale={short_repr(self.scale)} has no effect with pag_branch='uncond': the perturbed "
                "unconditional prediction replaces the plain one in CFG (eps = eps_u~ + guidance_scale "
                "(eps_c - eps_u~)), so guidance_scale sets the push and pag_strength the perturbation; leave "
                f"pag_scale at its default {_default('pag_scale'):g} or use pag_branch='cond'"
            )

    @classmethod
    def from_call(cls, **pag_kwargs: Any) -> SoftPAGConfig:
        """From the pipeline's keyword names (`pag_heads=..., pag_scale=...`)."""
        return cls(**{k.removeprefix("pag_"): v for k, v in pag_kwargs.items()})

    @classmethod
    def call_defaults(cls) -> dict[str, Any]:
        """{pipeline keyword: default} for every SoftPAG argument."""
        return {f"pag_{f.name}": f.default for f in fields(cls) if f.init}


# -- Generation ------------------------------------------------------------------------------------------------

PROMPT_LIMIT = 10_000  # characters; far beyond any text encoder's context, short enough to log and store
SEED_LIMIT = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed

GENERATION_SETTINGS = _settings(
    Setting("prompt", "", "text", 1, PROMPT_LIMIT, help="What to draw."),
    Setting("negative_prompt", None, "text", 0, PROMPT_LIMIT, help="What to steer away from (with CFG)."),
    Setting("num_inference_steps", 28, "integer", 1, 1000, help="Sampling steps."),
    Setting("guidance_scale", 5.0, "number", 0, 100,
            help="Classifier-free guidance scale (CFG); 1 or below turns CFG off."),
    Setting("height", None, "integer", 8, 4096, help="Image height in pixels (default: the model's)."),
    Setting("width", None, "integer", 8, 4096, help="Image width in pixels (default: the model's)."),
    Setting("seed", 0, "integer", 0, SEED_LIMIT, help="Random seed of the first image."),
    Setting("num_images", 1, "integer", 1, 1000, help="Images per prompt (seeds seed, seed+1, ...)."),
    Setting("batch_size", 4, "integer", 1, 256, help="Images generated together in one call."),
)  # fmt: skip


@dataclass(frozen=True)
class GenerationConfig:
    """Validated generation settings shared by the CLI, batch jobs and the demo (before any model loads).

    None for `height` / `width` means the model's own size; `guidance_scale` and `num_inference_steps` are
    always explicit here (front ends fill them from a model folder's recommendations first)."""

    prompt: str
    negative_prompt: str | None = GENERATION_SETTINGS["negative_prompt"].default
    num_inference_steps: int = GENERATION_SETTINGS["num_inference_steps"].default
    guidance_scale: float = GENERATION_SETTINGS["guidance_scale"].default
    height: int | None = GENERATION_SETTINGS["height"].default
    width: int | None = GENERATION_SETTINGS["width"].default
    seed: int = GENERATION_SETTINGS["seed"].default
    num_images: int = GENERATION_SETTINGS["num_images"].default
    batch_size: int = GENERATION_SETTINGS["batch_size"].default

    def __post_init__(self):
        """Check every value; raise GenerationError naming the first bad one."""
        for f in fields(self):
            checked = GENERATION_SETTINGS[f.name].check(getattr(self, f.name), GenerationError)
            object.__setattr__(self, f.name, checked)

    def call_arguments(self) -> dict[str, Any]:
        """The diffusers call arguments (those given; size only where set)."""
        keys = ("negative_prompt", "num_inference_steps", "guidance_scale", "height", "width")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


# Call arguments of diffusers pipelines that this project checks itself before a call (`check_call_arguments`).
CALL_SETTINGS = {
    **{k: GENERATION_SETTINGS[k] for k in ("num_inference_steps", "guidance_scale", "height", "width")},
    "true_cfg_scale": Setting("true_cfg_scale", None, "number", 0, 100, help="FLUX true CFG scale."),
    "num_images_per_prompt": Setting("num_images_per_prompt", None, "integer", 1, 1000),
    "guidance_rescale": Setting("guidance_rescale", None, "number", 0, 1),
}
# Boolean call arguments: checked when passed at all (None too), so that "no" or 0 is not read as a flag.
CALL_FLAGS = {"return_dict": Setting("return_dict", True, "bool")}
# Tensor call arguments (and the sigmas / timesteps lists) that must be finite: checked when given.
FINITE_KEYS = (
    "latents", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
    "prompt_embeds_2", "negative_prompt_embeds_2", "ip_adapter_image_embeds", "sigmas", "timesteps", "eta",
)  # fmt: skip


PROMPT_KEYS = tuple(f"{kind}prompt{n}" for n in ("", "_2", "_3") for kind in ("", "negative_"))


def check_call_arguments(kwargs: dict[str, Any]) -> None:
    """Check a pipeline call's numeric arguments and text prompts before any work; raise GenerationError.

    Checks what the caller passed (None and absent mean the pipeline's default): steps, CFG scales, size,
    image count, and `prompt` / `negative_prompt` strings (or lists of strings) for valid text. diffusers
    would otherwise turn `guidance_scale=nan` into 'CFG off' and `num_inference_steps=0` into an image. Flags
    (`return_dict`) must be bools; latents, prompt embeddings, sigmas and timesteps must be finite (NaN latents
    would give all-NaN images)."""
    for name, setting in CALL_SETTINGS.items():
        if kwargs.get(name) is not None:
            setting.check(kwargs[name], GenerationError)
    for name, setting in CALL_FLAGS.items():
        if name in kwargs:
            setting.check(kwargs[name], GenerationError)
    for name in FINITE_KEYS:
        if kwargs.get(name) is not None:
            check_finite(kwargs[name], name, GenerationError)
    for name in PROMPT_KEYS:
        value = kwargs.get(name)
        if isinstance(value, list | tuple):
            for i, text in enumerate(value):
                check_text(text, f"{name}[{i}]", GenerationError, 0, PROMPT_LIMIT)
        elif value is not None:
            check_text(value, name, GenerationError, 0, PROMPT_LIMIT)


# -- UpFusion ------------------------------------------------------------------------------------------------

# Query views in one call (an orbit's frames included): one per degree of a turntable. Every view is a row of the
# diffusion batch (two under CFG) and of UpSRT's ray batch, so this bounds the work and memory of a call; it is
# not a promise that this many fit a given device.
MAX_QUERY_CAMERAS = 360
MAX_INPUT_VIEWS = 6  # the paper's largest input set (its PSNR table runs 1 to 6 views)

UPFUSION_SETTINGS = _settings(
    Setting("views", None, "integer", 1, MAX_INPUT_VIEWS,
            help="Input images of the object (no poses); the first is the reference view."),
    Setting("num_inference_steps", None, "integer", 1, 1000,
            help="DDIM steps (None: the model's preset: 50 for the toy and the paper models)."),
    Setting("guidance_scale", None, "number", 1, 50,
            help="Classifier-free guidance against the model without the views; 1 turns it off (None: the "
                 "model's preset: 3 for the toy models, 9 for the paper's)."),
    Setting("azimuth", 0.0, "number", -math.inf, math.inf,
            help="Query camera azimuth in degrees, relative to the first view (0: the first view's)."),
    Setting("elevation", 0.0, "number", -90, 90,
            help="Query camera elevation in degrees, relative to the first view (90: from above)."),
    Setting("frames", 24, "integer", 1, MAX_QUERY_CAMERAS,
            help="Orbit frames: query views at equal azimuth steps around the object."),
    Setting("orbit_elevation", 15.0, "number", -90, 90, help="Elevation of the orbit in degrees."),
    Setting("frame_ms", 80, "integer", 1, 60_000, help="Milliseconds per frame of the orbit's GIF."),
    Setting("upsrt_only", False, "bool", help="Return UpSRT's regression render (no diffusion)."),
    Setting("scene_attention", True, "bool",
            help="False drops the scene-token cross-attention (the ablation; the hint stays)."),
    Setting("cfg_query_rays", None, "bool",
            help="Whether the conditional rows of a CFG batch get the scene-token query rays (None: the preset's)."),
    Setting("return_dict", True, "bool", help="Return an UpFusionPipelineOutput (else a tuple)."),
)  # fmt: skip


# -- Head search ---------------------------------------------------------------------------------------------

# `guidance.search.SearchSettings` and `SearchProfile` take their defaults from here; the CLI's and the demo's search
# inputs too (`steps` and `guidance_scale` there default to the model's recommended call instead, as generation's).
SEARCH_SETTINGS = _settings(
    Setting("k", 4, "integer", 1, 1024, help="Heads added per round."),
    Setting("rounds", 1, "integer", 1, 100, help="Greedy rounds."),
    Setting("search_strength", 1.0, "number", 0, 1, help="u while searching (paper: 1.0)."),
    Setting("use_strength", 0.5, "number", 0, 1, help="u written into the preset (paper: ~0.5)."),
    Setting("batch", 16, "integer", 1, 1024, help="Images per forward pass."),
    Setting("max_drop", 0.05, "number", 0, 1e6, help="How far the guard objective may drop."),
    Setting("size", None, "integer", 8, 4096, help="Image size during search (default: the model's)."),
    Setting("steps", 10, "integer", 1, 1000, help="Sampling steps of every searched image."),
    Setting("guidance_scale", 4.0, "number", 0, 100, help="CFG scale of every searched image (1 or below: off)."),
    Setting("validation", 0.25, "number", 0, 1,
            help="Share of the prompt-seed pairs held out to stop the rounds and report on (below 1)."),
    Setting("early_stop", True, "bool", help="Adopt a round only if it beats the best earlier selection."),
)  # fmt: skip


# -- Structured cross-attention ------------------------------------------------------------------------------

STRUCTURED_SETTINGS = _settings(
    Setting("structured", None, "choice", choices=(None, *STRUCTURED_MODES),
            help="Encode each noun phrase separately and mix it into cross-attention: 'key-value' (the "
                 "paper's default) or 'conjunction'. None = off."),
    Setting("structured_start", 0.0, "number", 0, 1, help="Fraction of the steps after which it starts."),
    Setting("structured_stop", 1.0, "number", 0, 1, help="Fraction of the steps at which it stops."),
)  # fmt: skip


@dataclass(frozen=True)
class StructuredConfig:
    """Validated structured cross-attention settings (the pipelines' `structured*` and `noun_phrases` arguments)."""

    mode: str | None = STRUCTURED_SETTINGS["structured"].default
    noun_phrases: Sequence | None = None
    layers: Sequence[int] | None = None
    start: float = STRUCTURED_SETTINGS["structured_start"].default
    stop: float = STRUCTURED_SETTINGS["structured_stop"].default
    modes: tuple[str, ...] = STRUCTURED_MODES

    def __post_init__(self):
        """Check every value; raise StructuredError naming the first bad one."""
        if self.mode is None:
            if self.noun_phrases is not None or self.layers is not None:
                raise StructuredError(
                    "noun_phrases / structured_layers need structured='key-value' or 'conjunction'"
                )
            return
        if self.mode not in self.modes:
            raise StructuredError(
                f"structured={self.mode!r} is not supported here; allowed: {self.modes} or None"
            )
        for attribute in ("start", "stop"):
            setting = STRUCTURED_SETTINGS[f"structured_{attribute}"]
            object.__setattr__(self, attribute, setting.check(getattr(self, attribute), StructuredError))
        check_window(self.start, self.stop, StructuredError, ("structured_start", "structured_stop"))
        if self.noun_phrases is not None and isinstance(self.noun_phrases, str):
            raise StructuredError(
                f"noun_phrases={self.noun_phrases!r} must be a list of phrases (or one list per prompt), "
                "not a string"
            )
        if self.noun_phrases is not None:
            self._check_phrases()
        if isinstance(self.layers, Sequence) and not isinstance(self.layers, str) and not self.layers:
            raise StructuredError(
                "structured_layers=[] chooses no layer, so the image would be the unstructured one; give layer "
                "indices, or None for every layer"
            )

    def _check_phrases(self) -> None:
        """Each phrase a non-blank string, each per-prompt list non-empty: a blank phrase (found at position 0 of
        any prompt) or an empty list would structure nothing and give the unstructured image."""
        phrases = self.noun_phrases
        if not isinstance(phrases, Sequence):
            raise StructuredError(f"noun_phrases={short_repr(phrases)} must be a list of phrases")
        nested = bool(phrases) and not isinstance(phrases[0], str)
        lists = list(enumerate(phrases)) if nested else [(None, phrases)]
        for i, texts in lists:
            label = "noun_phrases" if i is None else f"noun_phrases[{i}]"
            if isinstance(texts, str) or not isinstance(texts, Sequence):
                raise StructuredError(f"{label}={short_repr(texts)} must be a list of phrases")
            if nested and not texts:
                raise StructuredError(
                    f"{label}=[] gives that prompt no phrase (its image would be the unstructured one); "
                    "give at least one phrase of the prompt"
                )
            for j, text in enumerate(texts):
                check_text(text, f"{label}[{j}]", StructuredError, 1)

    def check_layers(self, count: int) -> None:
        """Raise StructuredError unless every entry of `layers` is a layer index in 0..count-1."""
        if self.layers is None:
            return
        if isinstance(self.layers, str) or not isinstance(self.layers, Sequence):
            raise StructuredError(f"structured_layers={self.layers!r} must be a list of layer indices")
        bad = [i for i in self.layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
        if bad:
            raise StructuredError(
                f"structured_layers={list(self.layers)!r}: layers must be in 0..{count - 1}"
            )
