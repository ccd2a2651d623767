"""HeadHunter pipelines: diffusers' SD3/SD3.5, FLUX.1, SD1.x/2.x and SDXL pipelines plus SoftPAG head guidance.

`HeadHunterPipeline.from_pretrained(path_or_hub_id)` reads `model_index.json` and returns the matching subclass.
Each subclass keeps its diffusers parent's whole `__call__` (schedulers, callbacks, LoRA, output types,
generator lists, offloading) and adds the `pag_*` arguments; see `SoftPAGMixin.__call__`. A model folder's
recommended call (`pipelines.loading.folder_recommendations`: steps, CFG, size, T5 length) is the default of the
loaded pipeline's `__call__`; explicit arguments win.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from guidance.batch_rows import CondRows
from guidance.config import SoftPAGConfig, SoftPAGError, StructuredError, check_call_arguments
from guidance.heads import shown_path
from guidance.perturbation import SoftPAG
from guidance.swap import component_lock, denoiser_of, one_call_per_scheduler
from pipelines.loading import (
    ModelFolderError,
    absent_components,
    check_components,
    folder_recommendations,
    load_checked,
    model_index,
    t5_length_by_design,
)
from pipelines.structured import StructuredMixin, StructuredSD3Mixin

_DEFAULTS = SoftPAGConfig.call_defaults()


class SoftPAGMixin:
    """Adds SoftPAG head-perturbation guidance to a diffusers text-to-image pipeline."""

    def _cond_rows(self, call_kwargs: dict) -> CondRows:
        """Batched CFG pipelines (SD3, SD, SDXL): the batch is [uncond, cond] with CFG on, [cond] otherwise."""
        return CondRows("last")

    # The parent rescales its guided prediction by `guidance_rescale` (SD, SDXL), the PAG term folded accordingly.
    _rescales = False
    # True: SoftPAG through the generic interceptor even where the adapter has a fast path (`guidance.adapters`).
    generic_adapter = False

    def _to_prediction(self):
        """How the PAG term maps from the denoiser's output to the prediction `scheduler.step` gets (None: same)."""
        return None

    def _check_call(self, call_kwargs: dict) -> None:
        """Refuse call settings under which the perturbed branch would not be what the user asked for."""

    # The call argument that turns CFG on (above `_cfg_off_at`) for pag_branch="uncond"; None: the pipeline has no CFG.
    _cfg_argument: str | None = "guidance_scale"
    _cfg_off_at = 1.0

    def _check_uncond_branch(self, call_kwargs: dict) -> None:
        """pag_branch="uncond" before any work: refuse a call whose CFG is off (the hooks check again per step)."""
        name = self._cfg_argument
        value = call_kwargs.get(name) if name else None
        if name and value is None:
            value = _parent_default(type(self), name)
        if name is None or (isinstance(value, int | float) and value <= self._cfg_off_at):
            why = f"{name}={value!r} turns CFG off" if name else f"{type(self).__name__} samples without CFG"
            raise SoftPAGError(
                f"pag_branch='uncond' needs CFG ({why}): there is no unconditional prediction to perturb; "
                "use pag_branch='cond'"
            )

    def __init_subclass__(cls, **kwargs):
        """Each pipeline's `encode_prompt` is its parent's (same signature), one call at a time per tokenizer:
        pipelines made with `from_pipe` share tokenizers, whose padding settings are shared state, so two threads
        encoding at once could get each other's padding."""
        super().__init_subclass__(**kwargs)
        parent = getattr(super(), "encode_prompt", None)
        if parent is None or "encode_prompt" in cls.__dict__:
            return

        @functools.wraps(parent)
        def encode_prompt(self, *args, **kwargs):
            trained = self.recorded_call.get("max_sequence_length")
            by_design = trained is not None and kwargs.get("max_sequence_length") == trained
            with (
                component_lock(getattr(self, "tokenizer", None)),
                t5_length_by_design(parent.__module__, trained) if by_design else contextlib.nullcontext(),
            ):
                return parent(self, *args, **kwargs)

        cls.encode_prompt = encode_prompt

    # The loaded folder's recommended call (`folder_recommendations`), the defaults of `__call__`; {} otherwise.
    recorded_call: Mapping[str, Any] = MappingProxyType({})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' `from_pretrained`; a local folder's recommended call becomes the defaults of `__call__`."""
        recorded = folder_recommendations(pretrained_model_name_or_path)  # checked before any weight loads
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe.recorded_call = MappingProxyType(recorded)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' `from_pipe`; the new pipeline keeps the recommended call of the one it is made from."""
        pipe = super().from_pipe(pipeline, **kwargs)
        pipe.recorded_call = getattr(pipeline, "recorded_call", MappingProxyType({}))
        return pipe

    def _with_recorded_call(self, args: tuple, kwargs: dict) -> dict:
        """The call's keyword arguments with the recommended call filling those the caller left out (passed by
        name or position, None included) and the parent's `__call__` takes; a recorded negative prompt only where
        no negative embeddings are given."""
        if not self.recorded_call:
            return kwargs
        names = list(_parent_parameters(type(self)))
        given = set(names[: len(args)]) | set(kwargs)
        if kwargs.get("negative_prompt_embeds") is not None:
            given.add("negative_prompt")
        filled = {
            k: v for k, v in self.recorded_call.items() if k in names and k not in given and v is not None
        }
        prompt = args[0] if args and names and names[0] == "prompt" else kwargs.get("prompt")
        if isinstance(filled.get("negative_prompt"), str) and isinstance(prompt, list | tuple):
            filled["negative_prompt"] = [filled["negative_prompt"]] * len(
                prompt
            )  # one per prompt, as diffusers asks
        return {**filled, **kwargs}

    def __call__(
        self,
        *args,
        pag_heads=_DEFAULTS["pag_heads"],
        pag_scale: float | Sequence[float] = _DEFAULTS["pag_scale"],
        pag_strength: float = _DEFAULTS["pag_strength"],
        pag_identity: str = _DEFAULTS["pag_identity"],
        pag_start: float = _DEFAULTS["pag_start"],
        pag_stop: float = _DEFAULTS["pag_stop"],
        pag_shared_prefix: bool = _DEFAULTS["pag_shared_prefix"],
        pag_heads_per_image: Sequence | None = _DEFAULTS["pag_heads_per_image"],
        pag_every: int = _DEFAULTS["pag_every"],
        pag_branch: str = _DEFAULTS["pag_branch"],
        **kwargs,
    ):
        """Generate with the parent pipeline's arguments plus SoftPAG guidance.

        pag_heads: heads to perturb: "L1H10,L5H3", (layer, head[, u]) tuples, a HeadSelection or a preset JSON path.
            None turns SoftPAG off (the parent pipeline runs unchanged; other `pag_*` arguments moved from their
            defaults are named in a warning, since they then change nothing).
        pag_scale: guidance scale w of the perturbed branch (one per head group, or one for all).
        pag_strength: u for entries that carry none; 0 leaves a head untouched, 1 makes its map the identity.
        pag_identity: "joint" (identity over the whole joint sequence, the paper's) or "image" (only the
            image->image block, as diffusers' PAG for SD3).
        pag_start, pag_stop: the fraction of the schedule in which the perturbed branch runs.
        pag_shared_prefix: compute the blocks before the first perturbed layer once for cond and perturbed rows.
        pag_heads_per_image: instead of `pag_heads`, one selection per generated image (batch_size *
            num_images_per_prompt of them), each guiding only its own image; a head search evaluates many
            candidate head sets in one batch this way.
        pag_every: run the perturbed branch on every k-th step of the window only (its first step, then every
            k-th); the steps between cost like CFG and add the last computed PAG term again, as it is (it is a
            difference of predictions, in the model's prediction space). 1 = every step.
        pag_branch: "cond" (an extra perturbed copy of the cond rows: eps_u + w_cfg (eps_c - eps_u) +
            w_pag (eps_c - eps_p)) or "uncond" (CFG's own uncond rows are perturbed, no extra rows:
            eps_u~ + w_cfg (eps_c - eps_u~); needs CFG, one head group, pag_scale left at its default).
        """
        kwargs = self._with_recorded_call(args, kwargs)
        check_call_arguments({**dict(zip(("prompt",), args)), **kwargs})
        with one_call_per_scheduler(self.scheduler, type(self).__name__):
            return self._guided_call(
                args, kwargs, pag_heads, pag_scale, pag_strength, pag_identity, pag_start, pag_stop,
                pag_shared_prefix, pag_heads_per_image, pag_every, pag_branch,
            )  # fmt: skip

    def _guided_call(
        self, args, kwargs, pag_heads, pag_scale, pag_strength, pag_identity, pag_start, pag_stop,
        pag_shared_prefix, pag_heads_per_image, pag_every, pag_branch,
    ):  # fmt: skip
        """The call, with its scheduler held: the parent's alone without heads, else inside `SoftPAG.applied`."""
        if pag_heads is None and pag_heads_per_image is None:
            _warn_unused(
                pag_scale=pag_scale, pag_strength=pag_strength, pag_identity=pag_identity, pag_start=pag_start,
                pag_stop=pag_stop, pag_shared_prefix=pag_shared_prefix, pag_every=pag_every, pag_branch=pag_branch,
            )  # fmt: skip
            return super().__call__(*args, **kwargs)
        config = SoftPAGConfig.from_call(
            pag_heads=pag_heads, pag_scale=pag_scale, pag_strength=pag_strength, pag_identity=pag_identity,
            pag_start=pag_start, pag_stop=pag_stop, pag_shared_prefix=pag_shared_prefix,
            pag_heads_per_image=pag_heads_per_image, pag_every=pag_every, pag_branch=pag_branch,
        )  # fmt: skip
        self._check_call(kwargs)
        if config.branch == "uncond":
            self._check_uncond_branch(kwargs)
        name = getattr(self, "name_or_path", None)
        pag = SoftPAG(denoiser_of(self), config, name, self._to_prediction(), self.generic_adapter)
        with pag.applied(self, self._cond_rows(kwargs), self._rescales):
            return super().__call__(*args, **kwargs)


def _warn_unused(**given) -> None:
    """Warn, naming them, about `pag_*` arguments moved from their defaults in a call without heads: SoftPAG is off
    there, so they change nothing (an option is never ignored silently)."""
    moved = [f"{name}={value!r}" for name, value in given.items() if _differs(value, _DEFAULTS[name])]
    if moved:
        warnings.warn(
            f"{', '.join(moved)}: no effect without pag_heads (SoftPAG is off in this call); give pag_heads, "
            "or a preset, to perturb heads",
            UserWarning,
            stacklevel=4,
        )


def _differs(value, default) -> bool:
    """Whether `value` is not the default (anything that cannot be compared, e.g. an array, counts as moved)."""
    try:
        return bool(value != default)
    except Exception:
        return True


def _parent_default(cls: type, name: str):
    """The default of keyword `name` in the first diffusers `__call__` of `cls`'s bases (None if it has none)."""
    parameter = _parent_parameters(cls).get(name)
    return None if parameter is None else parameter.default


@functools.cache
def _parent_parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    """The parameters (after `self`) of the first diffusers `__call__` of `cls`'s bases."""
    for base in cls.__mro__:
        if base.__module__.startswith("diffusers.") and "__call__" in vars(base):
            parameters = dict(inspect.signature(base.__call__).parameters)
            parameters.pop("self", None)
            return MappingProxyType(parameters)
    return MappingProxyType({})


class HeadHunterSD3Pipeline(SoftPAGMixin, StructuredSD3Mixin, StableDiffusion3Pipeline):
    """StableDiffusion3Pipeline (SD3, SD3.5) with SoftPAG (layers index `transformer.transformer_blocks`) and the
    experimental MMDiT port of structured attention."""

    def _check_call(self, call_kwargs: dict) -> None:
        if call_kwargs.get("structured") is not None:
            raise StructuredError("structured on SD3 does not combine with pag_heads yet; use one of them")


class HeadHunterFluxPipeline(SoftPAGMixin, FluxPipeline):
    """FluxPipeline with SoftPAG; layers 0..D-1 are double-stream blocks, D.. the single-stream blocks."""

    def _cond_rows(self, call_kwargs: dict) -> CondRows:
        """FLUX runs cond and (true-CFG) uncond as separate calls, cond first: every row of the main call is cond."""
        return CondRows(None)

    _cfg_argument = "true_cfg_scale"  # `guidance_scale` is FLUX.1's distilled guidance, not CFG


class HeadHunterSDPipeline(SoftPAGMixin, StructuredMixin, StableDiffusionPipeline):
    """StableDiffusionPipeline (SD1.x/2.x) with SoftPAG on self-attention and structured cross-attention;
    `guidance_rescale` applies to the whole guided prediction, as in diffusers' PAG pipelines."""

    _rescales = True


class HeadHunterSDXLPipeline(SoftPAGMixin, StructuredMixin, StableDiffusionXLPipeline):
    """StableDiffusionXLPipeline with SoftPAG on self-attention and structured cross-attention; `guidance_rescale`
    as in diffusers' PAG pipelines."""

    _rescales = True


# model_index.json `_class_name` -> our subclass.
PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {}
# Modules that register more families on import (`register_pipeline`), loaded when a name is not found.
EXTENSIONS = ("pipelines.families",)
# Pipelines of this project that are not SoftPAG pipelines: the class that loads them.
OTHER_PIPELINES = {
    "UpFusionPipeline": "`from pipelines import UpFusionPipeline; UpFusionPipeline.from_pretrained(path)`"
}


def register_pipeline(cls: type[DiffusionPipeline], parents: Sequence[str]) -> None:
    """Make `HeadHunterPipeline.from_pretrained` load folders of `cls` or of any of its diffusers `parents` as `cls`."""
    for name in (cls.__name__, *parents):
        PIPELINE_CLASSES[name] = cls


for _cls, _parents in (
    (HeadHunterSD3Pipeline, ("StableDiffusion3Pipeline", "StableDiffusion3PAGPipeline")),
    (HeadHunterFluxPipeline, ("FluxPipeline",)),
    (HeadHunterSDPipeline, ("StableDiffusionPipeline", "StableDiffusionPAGPipeline")),
    (HeadHunterSDXLPipeline, ("StableDiffusionXLPipeline", "StableDiffusionXLPAGPipeline")),
):
    register_pipeline(_cls, _parents)


def _load_extensions() -> None:
    for module in EXTENSIONS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def pipeline_class(class_name: str) -> type[DiffusionPipeline]:
    """Our pipeline class for a diffusers pipeline class name."""
    if class_name in OTHER_PIPELINES:
        raise ValueError(
            f"{class_name} is not a SoftPAG pipeline: load it with {OTHER_PIPELINES[class_name]}"
        )
    if class_name not in PIPELINE_CLASSES:
        _load_extensions()
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(
            f"HeadHunterPipeline does not support {class_name!r}; supported: {sorted(PIPELINE_CLASSES)}"
        )
    return PIPELINE_CLASSES[class_name]


class HeadHunterPipeline:
    """Entry point: `HeadHunterPipeline.from_pretrained(...)` / `.from_pipe(...)` return the matching subclass."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> DiffusionPipeline:
        """Load SD3/SD3.5, FLUX.1, SD1.x/2.x or SDXL from a folder or hub id as its HeadHunter subclass."""
        hub_kwargs = {
            k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs
        }
        path = pretrained_model_name_or_path
        index = model_index(path, **hub_kwargs)
        local = Path(path).expanduser().exists()
        try:
            target = pipeline_class(index.get("_class_name", "?"))
        except ValueError as error:
            if not local:
                raise
            raise ModelFolderError(f"model folder {shown_path(path)}: model_index.json: {error}") from None
        for name, value in absent_components(target, index).items():
            kwargs.setdefault(name, value)
        kwargs.setdefault("use_safetensors", True)  # pickle weights are never loaded
        if not local:
            return target.from_pretrained(path, **kwargs)
        check_components(path, index)
        return load_checked(path, index, lambda: target.from_pretrained(path, **kwargs))

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs) -> DiffusionPipeline:
        """Wrap an already loaded diffusers pipeline (components shared, not copied)."""
        return pipeline_class(type(pipeline).__name__).from_pipe(pipeline, **kwargs)


class StructuredDiffusionPipeline(HeadHunterPipeline):
    """`StructuredDiffusionPipeline.from_pretrained(...)`: the SD1.x/2.x or SDXL HeadHunter pipeline, whose calls
    take `structured="key-value"` or `"conjunction"` (and SoftPAG's `pag_*` arguments too), or the SD3 one with
    the experimental MMDiT port (key-value only)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> DiffusionPipeline:
        """Load an SD1.x/2.x, SDXL or SD3 pipeline; other architectures are refused with their name."""
        hub_kwargs = {
            k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs
        }
        name = model_index(pretrained_model_name_or_path, **hub_kwargs).get("_class_name", "?")
        if not issubclass(pipeline_class(name), StructuredMixin):
            raise ValueError(f"StructuredDiffusionPipeline supports SD1.x/2.x, SDXL and SD3, not {name!r}")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
