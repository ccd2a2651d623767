"""One SoftPAG call: the strength tables of a validated config, and the hooks that run the perturbed branch.

Flow of a denoiser call while the call's scope is open (`SoftPAG.applied(...)`, a `guidance.scope.CallScope`
whose state, a `_SoftPAGCall`, its hooks are handed; pieces in `guidance.batch_rows`):
1. The denoiser's pre-hook sees the pipeline's batch (`[uncond, cond]` or `[cond]`). On the step's main call (the
   first denoiser call since the last `scheduler.step`, not SD3's skip-layer call nor FLUX's true-CFG uncond
   call, which come after it) inside the step window, it appends one copy of the cond rows per head group
   (`expand_rows`) and publishes each perturbed module's strengths (rows, heads) in the call's state, the
   `PerturbationState` the processors read (0 on the pipeline's rows).
2. Shared prefix (transformers): blocks before the first perturbed layer compute the same thing for cond and
   perturbed rows, so only the time-embedding inputs grow; those blocks get the first rows of `temb`, and the
   first perturbed block's pre-hook copies the cond rows of the image and text streams.
3. The processors apply `softpag_attention` on their module's rows.
4. The forward hook returns the pipeline's rows untouched and keeps delta = sum_g w_g (cond - perturbed_g)
   (`split_guidance`); `scheduler.step` receives the parent's prediction plus delta (`fold_guidance`).
5. Cheaper variants. `pag_every=k`: only every k-th main evaluation of the window is expanded; the ones between
   run the pipeline's batch as it is (the cost of CFG) and fold the last delta again, unscaled (see `_SoftPAGCall`).
   `pag_branch="uncond"`: nothing is expanded; the pipeline's own uncond rows get the strengths, so its CFG becomes
   eps = eps_u~ + w_cfg (eps_c - eps_u~) with eps_u~ the perturbed uncond prediction (two branches, not three).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from guidance.adapters import heads_layout
from guidance.batch_rows import (
    CondRows,
    Rescale,
    RowLayout,
    cfg_parts,
    expand_rows,
    fold_guidance,
    row_strengths,
    split_guidance,
    strength_table,
)
from guidance.config import SoftPAGConfig, SoftPAGError
from guidance.heads import HeadSelection
from guidance.layouts import ModelLayout
from guidance.processors import PerturbationState
from guidance.scope import CallScope, ScopeHook, StepWindow


class SoftPAG:
    """A SoftPAG config resolved against one denoiser: per head group {module: strengths}, scales, split block."""

    def __init__(
        self,
        denoiser: torch.nn.Module,
        config: SoftPAGConfig,
        model_name: str | None = None,
        to_prediction: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generic: bool = False,
    ):
        """model_name: the loaded model's name (a preset found on another model warns). to_prediction: maps the
        PAG term from the denoiser's output to what the pipeline hands `scheduler.step` (None: the same).
        generic: the generic interceptor even where the adapter has a fast path (`guidance.adapters`)."""
        self.denoiser, self.config, self.model_name = denoiser, config, model_name
        self.to_prediction = to_prediction or (lambda delta: delta)
        self.layout: ModelLayout = heads_layout(denoiser, generic)
        if config.heads_per_image is not None:
            self._per_image(config.heads_per_image)
        else:
            self._groups(HeadSelection.parse(config.heads, "pag_heads"))
        self.modules = sorted({name for table in self.group_strengths for name in table})
        self.heads = {name: self.layout.heads_of(name) for name in self.modules}
        shared = config.shared_prefix and self.layout.blocks and config.branch == "cond"
        self.split_block = min(self.layers) if shared else None

    def _strengths(self, selection: HeadSelection, parameter: str) -> dict[str, torch.Tensor]:
        """{module name: strengths (heads,)} of all entries of a selection, checked against the model."""
        selection.validate(self.layout.heads_per_layer, parameter)
        table: dict[str, torch.Tensor] = {}
        for head in selection.entries:
            site = self.layout.sites[head.layer, head.attention]
            u = self.config.strength if head.strength is None else head.strength
            table.setdefault(site.name, torch.zeros(site.heads))[head.head] = u
        return table

    def _groups(self, selection: HeadSelection) -> None:
        """`pag_heads`: one perturbed copy of the cond rows per head group, each with its own scale."""
        # The whole selection: a preset's recorded model and shape are checked before it is split into groups.
        selection.validate(self.layout.heads_per_layer, "pag_heads")
        _warn_other_model(selection, self.model_name, self.layout)
        groups = selection.groups
        if isinstance(self.config.scale, tuple):
            if len(self.config.scale) != len(groups):
                raise SoftPAGError(
                    f"pag_scale has {len(self.config.scale)} values for {len(groups)} head groups"
                )
            self.scales = list(self.config.scale)
        else:
            self.scales = [self.config.scale if g.scale is None else g.scale for g in groups]
        if self.config.branch == "uncond" and len(groups) > 1:
            raise SoftPAGError(
                f"pag_branch='uncond' takes one head group, not {len(groups)}: the uncond rows carry one "
                "perturbation per image; pass pag_heads without 'name: ...;' groups or use pag_branch='cond'"
            )
        self.group_strengths = [self._strengths(HeadSelection((g,)), "pag_heads") for g in groups]
        self.layers = [h.layer for h in selection.entries]
        self.images: int | None = None

    def _per_image(self, selections: Sequence) -> None:
        """`pag_heads_per_image`: one perturbed row per image, each with its own heads (head search batches)."""
        if isinstance(selections, str) or not len(selections):
            raise SoftPAGError(
                "pag_heads_per_image must be a non-empty list with one head selection per image"
            )
        if isinstance(self.config.scale, tuple):
            raise SoftPAGError("pag_heads_per_image takes one pag_scale for all images, not a list")
        self.scales = [self.config.scale]
        # None: that image gets no heads (u = 0), i.e. it comes out as without SoftPAG.
        parsed = [
            None if s is None else HeadSelection.parse(s, f"pag_heads_per_image[{i}]")
            for i, s in enumerate(selections)
        ]
        tables = [
            {} if s is None else self._strengths(s, f"pag_heads_per_image[{i}]") for i, s in enumerate(parsed)
        ]
        if not any(tables):
            raise SoftPAGError("pag_heads_per_image: every entry is None; pass at least one head selection")
        merged: dict[str, torch.Tensor] = {}
        for i, table in enumerate(tables):
            for name, u in table.items():
                merged.setdefault(name, torch.zeros(len(tables), u.numel()))[i] = u
        self.group_strengths = [merged]
        self.layers = [h.layer for s in parsed if s is not None for h in s.entries]
        self.images = len(tables)

    def applied(self, pipe, cond_rows: CondRows, rescales: bool = False) -> CallScope:
        """The scope of one pipeline call (enter it around the parent's `__call__`): the SoftPAG processors on the
        perturbed modules, the denoiser's hooks (and the shared prefix's block hooks), the `scheduler.step` fold;
        its state, a `_SoftPAGCall`, is what they are handed.

        cond_rows: where the cond rows sit in a denoiser batch. rescales: the parent rescales its guided
        prediction by its `guidance_rescale` (SD, SDXL)."""
        call = _SoftPAGCall(self, pipe, cond_rows, rescales)
        scope = CallScope(call, "pag_heads", SoftPAGError)
        processors = {name: self.layout.processor(name) for name in self.modules}
        scope.processors(self.denoiser, processors, self.layout.replaceable)
        scope.hook(self.denoiser, "softpag", _DenoiserHook())
        if self.split_block is not None:  # blocks after the split block see the expanded streams as they are
            for index, name in enumerate(self.layout.blocks[: self.split_block + 1]):
                scope.hook(self.denoiser.get_submodule(name), "softpag-block", _BlockHook(index))
        return scope.around(pipe.scheduler, "step", _SoftPAGCall.step)


def _warn_other_model(selection: HeadSelection, loaded: str | None, layout: ModelLayout) -> None:
    """A preset found on another model of the same shape (SD3-medium heads on SD3.5-medium) runs, with a warning
    that names both; another shape was already refused by `HeadSelection.validate`."""
    found_on = selection.metadata.get("model") if isinstance(selection.metadata, Mapping) else None
    if not found_on or not loaded or str(found_on).rstrip("/").rsplit("/", 1)[-1] in str(loaded):
        return
    shape = f"{layout.num_layers} layers x {max(layout.heads_per_layer['attn'].values())} heads"
    warnings.warn(
        f"pag_heads: this preset was found on {found_on}; the loaded model is {loaded} (the same shape, {shape}). "
        "Heads of another model need not do the same thing: check the result or search heads for this model.",
        UserWarning,
        stacklevel=4,
    )


# -- the state of one call and its hooks ---------------------------------------------------------------------


class _SoftPAGCall(PerturbationState):
    """The running call's state, handed to its hooks: is this denoiser call perturbed, its row layout, its delta;
    and, as a `PerturbationState`, what the processors perturb in the denoiser call now running.

    pag_every=k: the window's main evaluations 0, k, 2k, ... run the perturbed branch; the others run the pipeline's
    batch unexpanded and fold the last delta again. The delta is reused as it is, not rescaled for the new step: it
    is a difference of two predictions in the space the model predicts (noise or velocity), whose scale does not
    change with the noise level the way a sample does, so it is the estimate of this step's term a step earlier.
    pag_branch="uncond": the pipeline's own uncond rows get the strengths (no rows are added, no delta): in a
    batched CFG call the uncond rows of the main call; where the uncond prediction is a separate call after the
    cond one (FLUX.1 and Qwen-Image true CFG, Chroma, Wan), that whole call. A step that should perturb an uncond
    prediction and got none (CFG off) raises."""

    def __init__(self, pag: SoftPAG, pipe, cond_rows: CondRows, rescales: bool):
        super().__init__(pag.config.identity)
        self.pag, self.pipe, self.cond_rows, self.rescales = pag, pipe, cond_rows, rescales
        self.signature = inspect.signature(pag.denoiser.forward)
        self.window = StepWindow(pipe.scheduler, pag.config.start, pag.config.stop)
        self.first_of_step = True
        self.in_window = 0  # main evaluations inside the window so far (pag_every counts these)
        self.mode: str | None = None  # the running denoiser call: "expand", "reuse", "uncond" or None (plain)
        self.layout: RowLayout | None = None  # set while the current denoiser call is expanded
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (delta, pure output) for this step
        self.last_delta: torch.Tensor | None = None  # the last computed PAG term, reused by pag_every
        self.uncond_due = False  # pag_branch="uncond": this step's uncond prediction is a call still to come
        self.built_for: tuple = ()  # the batch shape `table` was built for
        self.table: dict[str, torch.Tensor] = {}  # strengths by module for that shape, published per call

    def _is_main_call(self, inputs: dict) -> bool:
        """The step's first denoiser call; SD3's skip-layer call and FLUX's true-CFG uncond call come later."""
        main = self.first_of_step and not inputs.get("skip_layers")
        if main:
            self.first_of_step = False
        return main

    def _perturbs_now(self) -> bool:
        """Count one main evaluation; True when it lies in the window and is one of every `pag_every`."""
        if not self.window.advance():
            return False
        self.in_window += 1
        return (self.in_window - 1) % self.pag.config.every == 0

    def before(self, args, kwargs):
        """Denoiser pre-hook: decide what this call does; for the cond branch expand its inputs (B -> B + G*C)."""
        bound = self.signature.bind(*args, **kwargs)
        inputs = bound.arguments
        self.layout, self.mode, self.strengths = None, None, {}
        if not self._is_main_call(inputs):
            if self.uncond_due and not inputs.get("skip_layers"):  # the step's separate uncond call
                self.uncond_due = False
                self._perturb_rows(inputs, torch.arange(self._batch(inputs)[0]))
            return None
        before = self.in_window
        perturbs = self._perturbs_now()
        if self.pag.config.branch == "uncond":
            if perturbs:
                self._perturb_uncond(inputs)
            return None
        if not perturbs:  # inside the window between two perturbed steps: reuse; outside it: plain
            self.mode = "reuse" if self.in_window > before else None
            return None
        rows, device = self._batch(inputs)
        self.layout = self._row_layout(rows, device)
        self.mode = "expand"
        self._expand(inputs, self.layout)
        return bound.args, bound.kwargs

    def _batch(self, inputs: dict) -> tuple[int, torch.device]:
        """B and the device, from the input that counts the batch (a per-sample list: its first tensor's)."""
        name = self.pag.layout.inputs.rows
        first = inputs[name] if name else next(iter(inputs.values()))
        return len(first), (first[0] if isinstance(first, list) else first).device

    def _cond(self, rows: int) -> slice:
        """The cond rows of this denoiser batch (the pipeline's CFG read now: a callback may turn it off)."""
        cfg = self.cond_rows.half is not None and self.pipe.do_classifier_free_guidance
        return self.cond_rows.of(rows, cfg)

    def _row_layout(self, rows: int, device: torch.device) -> RowLayout:
        """The call's row layout; publishes each perturbed module's strengths (built once per batch shape)."""
        layout = RowLayout.of(rows, self._cond(rows), len(self.pag.group_strengths))
        if self.pag.images is not None and self.pag.images != layout.size:
            raise SoftPAGError(
                f"pag_heads_per_image has {self.pag.images} selections but the call generates {layout.size} images"
            )
        if self.built_for != (rows, layout.size):  # the same every step of a call: build once, on the device
            self.table = strength_table(layout, self.pag.group_strengths, self.pag.heads, device)
            self.built_for = (rows, layout.size)
        self.strengths = self.table
        return layout

    def _perturb_uncond(self, inputs: dict) -> None:
        """pag_branch="uncond" on a main call: perturb its uncond rows, or expect a separate uncond call."""
        rows = self._batch(inputs)[0]
        uncond = torch.ones(rows, dtype=torch.bool)
        uncond[self._cond(rows)] = False
        if uncond.any():
            self._perturb_rows(inputs, uncond.nonzero().flatten())
        else:
            self.uncond_due = True

    def _perturb_rows(self, inputs: dict, perturbed: torch.Tensor) -> None:
        """Publish the strengths for `perturbed` rows of this (unexpanded) call (built once per row set)."""
        rows, device = self._batch(inputs)
        key = (rows, tuple(perturbed.tolist()))
        if self.built_for != key:
            (group,) = self.pag.group_strengths
            self.table = row_strengths(rows, perturbed, group, self.pag.heads, device)
            self.built_for = key
        self.strengths = self.table
        self._publish_text_tokens(inputs)
        self.mode = "uncond"

    def _expand(self, inputs: dict, layout: RowLayout) -> None:
        """Grow the inputs that carry one row per batch item (with a shared prefix, not the streams)."""
        spec = self.pag.layout.inputs
        if spec.grown is None:
            names = [name for name in inputs if name not in spec.unbatched]
        elif self.pag.split_block is None:
            names = spec.grown
        else:
            names = [name for name in spec.grown if name not in spec.streams]
        for name in names:
            if name in inputs:
                inputs[name] = expand_rows(inputs[name], layout)
        self._publish_text_tokens(inputs)

    def _publish_text_tokens(self, inputs: dict) -> None:
        """The text length of this call, for the "image" identity of single-stream blocks."""
        context = inputs.get("encoder_hidden_states")
        self.text_tokens = context.shape[1] if isinstance(context, torch.Tensor) else None

    def block(self, index: int, kwargs: dict) -> dict:
        """Block pre-hook (shared prefix): blocks before the split see the B rows; the split block expands."""
        split = self.pag.split_block
        if self.layout is None or split is None or index > split:
            return kwargs
        if index < split:
            kwargs["temb"] = kwargs["temb"][: self.layout.rows]
        else:
            for name in self.pag.layout.inputs.streams:
                kwargs[name] = expand_rows(kwargs[name], self.layout)
        return kwargs

    def after(self, output):
        """Denoiser hook: return the pipeline's B rows untouched; keep the delta to add at `scheduler.step`."""
        mode, layout, self.mode, self.layout, self.strengths = self.mode, self.layout, None, None, {}
        if mode in (None, "uncond"):
            return output
        sample = output[0] if isinstance(output, tuple) else output.sample
        listed = isinstance(sample, list)  # per-sample outputs (Z-Image) stay a list
        sample = torch.stack(sample) if listed else sample
        if mode == "reuse":  # pag_every: this step's own pure output, the last step's PAG term
            self.pending = (self.last_delta, sample)
            return output
        pure, delta = split_guidance(sample, layout, self.pag.scales)
        self.last_delta = self.pag.to_prediction(delta)
        self.pending = (self.last_delta, pure)
        if listed:
            pure = list(pure.unbind(0))
        if isinstance(output, tuple):
            return (pure, *output[1:])
        output.sample = pure
        return output

    def step(self, model_output: torch.Tensor) -> torch.Tensor:
        """At `scheduler.step`: add the PAG term of this step's main call; the next call starts a new step."""
        self.first_of_step = True
        if self.uncond_due:
            raise SoftPAGError(
                "pag_branch='uncond': this call has no unconditional prediction to perturb (CFG is off: "
                "guidance_scale <= 1, or FLUX.1 / Qwen-Image without true CFG, i.e. true_cfg_scale <= 1 or no "
                "negative prompt); turn CFG on or use pag_branch='cond'"
            )
        if self.pending is None:
            return model_output
        (delta, pure), self.pending = self.pending, None
        return fold_guidance(model_output, delta, pure, self._rescale())

    def _rescale(self) -> Rescale | None:
        """How the parent rescaled this step's guided prediction (its `guidance_rescale`, read now); None: not."""
        if not (self.rescales and self.pipe.do_classifier_free_guidance):
            return None
        return Rescale(
            float(self.pipe.guidance_rescale),
            functools.partial(cfg_parts, guidance_scale=self.pipe.guidance_scale),
        )


class _DenoiserHook(ScopeHook):
    """The denoiser's pre-hook and hook, for every running SoftPAG call: the call decides, expands and splits."""

    serves = _SoftPAGCall

    def pre_forward(self, call: _SoftPAGCall, module, args, kwargs):
        return call.before(args, kwargs)

    def post_forward(self, call: _SoftPAGCall, module, args, kwargs, output):
        return call.after(output)


class _BlockHook(ScopeHook):
    """The pre-hook of block `index` for the shared prefix (see `_SoftPAGCall.block`)."""

    serves = _SoftPAGCall

    def __init__(self, index: int):
        self.index = index

    def pre_forward(self, call: _SoftPAGCall, module, args, kwargs):
        return args, call.block(self.index, kwargs)
