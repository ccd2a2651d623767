"""`SoftPAGGuidance`: SoftPAG head guidance as a diffusers guider, for modular pipelines (`diffusers.guiders`).

The modular denoise loops run one denoiser call per prediction the guider asks for (`prepare_inputs`), calling
`prepare_models` before and `cleanup_models` after each. This guider asks for [cond, uncond, perturbed cond] (CFG
on) or [cond, perturbed cond] (CFG off); for the perturbed call it puts the adapter's SoftPAG processor
(`guidance.adapters`) on the chosen heads' attention modules: a fast path, or the generic interceptor, which perturbs
the model's own attention call whatever attention backend is set. diffusers' `PerturbedAttentionGuidance` intercepts only PyTorch's SDPA and silently
perturbs nothing under other backends (tests/test_guider.py shows it).

Combination (the paper's): eps = eps_u + w_cfg (eps_c - eps_u) + w_pag (eps_c - eps_p); CFG off:
eps_c + w_pag (eps_c - eps_p). Same head notation, u, identity modes and window as the pipelines' `pag_*` arguments.
`pag_every=k`: the perturbed prediction is asked for on the window's steps 0, k, 2k, ...; the steps between ask for
cond (and uncond) only and add the last w_pag (eps_c - eps_p) as it is. `pag_branch="uncond"`: no perturbed batch;
CFG's uncond batch runs with the heads perturbed: eps = eps_u~ + w_cfg (eps_c - eps_u~).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from guidance.config import SoftPAGConfig, SoftPAGError
from guidance.perturbation import SoftPAG
from guidance.processors import PerturbationState
from guidance.scope import CallScope, ScopeHook

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState

_PREDICTIONS = ["pred_cond", "pred_uncond", "pred_cond_perturbed"]
_PAG = SoftPAGConfig.call_defaults()  # the pipelines' pag_* defaults


class SoftPAGGuidance(BaseGuidance):
    """CFG plus SoftPAG ("Fine-Grained Perturbation Guidance via Attention Head Selection", 2025) on chosen heads.

    Args:
        guidance_scale: CFG scale (1 = no uncond prediction).
        pag_heads: the heads, in the pipelines' notation ("L1H10,L5H3=0.5", or [[layer, head], ...]); one group.
        pag_scale: w of the perturbed branch. pag_strength: u for entries without one.
        pag_identity: "joint" (the paper's) or "image". pag_start, pag_stop: the fraction of steps with SoftPAG.
        pag_every: the perturbed prediction on every k-th step of its window; the last PAG term between.
        pag_branch: "cond" (a perturbed cond batch) or "uncond" (CFG's uncond batch perturbed; needs CFG over the
            whole SoftPAG window).
        start, stop: the fraction of steps with CFG (as diffusers' guiders).
    """

    _input_predictions = _PREDICTIONS

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.0,
        pag_heads: str | list | None = _PAG["pag_heads"],
        pag_scale: float = _PAG["pag_scale"],
        pag_strength: float = _PAG["pag_strength"],
        pag_identity: str = _PAG["pag_identity"],
        pag_start: float = _PAG["pag_start"],
        pag_stop: float = _PAG["pag_stop"],
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
        pag_every: int = _PAG["pag_every"],
        pag_branch: str = _PAG["pag_branch"],
    ):
        super().__init__(start, stop, enabled)
        self.guidance_scale = guidance_scale
        self.softpag = None
        if pag_heads is not None:  # validated now; resolved against the model at the first perturbed call
            # shared_prefix off: a modular pipeline runs the perturbed batch as a call of its own (no prefix to share)
            self.softpag = SoftPAGConfig.from_call(
                pag_heads=pag_heads, pag_scale=pag_scale, pag_strength=pag_strength, pag_identity=pag_identity,
                pag_start=pag_start, pag_stop=pag_stop, pag_shared_prefix=False, pag_every=pag_every,
                pag_branch=pag_branch,
            )  # fmt: skip
            if self.softpag.branch == "uncond":
                self._check_uncond_branch()
        self._scope: CallScope | None = None  # the perturbed batch's, open from prepare_models to its end
        self._resolved: tuple[int, SoftPAG] | None = None
        self._last_delta: torch.Tensor | None = None  # the last w_pag (eps_c - eps_p), reused by pag_every

    def _check_uncond_branch(self) -> None:
        """pag_branch="uncond" perturbs CFG's uncond batch: CFG must run on every step SoftPAG does."""
        config = self.softpag
        if math.isclose(self.guidance_scale, 1.0):
            raise SoftPAGError(
                f"pag_branch='uncond' needs CFG (guidance_scale={self.guidance_scale!r} turns it off): there is "
                "no unconditional prediction to perturb; use pag_branch='cond'"
            )
        if not (self._start <= config.start and config.stop <= self._stop):
            raise SoftPAGError(
                f"pag_branch='uncond': the SoftPAG window [{config.start:g}, {config.stop:g}) must lie inside "
                f"the CFG window [start={self._start:g}, stop={self._stop:g}), where an uncond batch runs"
            )

    # -- which predictions this step needs ----------------------------------------------------------------

    def _in_window(self, start: float, stop: float) -> bool:
        if self._num_inference_steps is None:
            return True
        return start <= self._step / self._num_inference_steps < stop

    def _is_cfg_enabled(self) -> bool:
        return (
            self._enabled
            and self._in_window(self._start, self._stop)
            and not math.isclose(self.guidance_scale, 1.0)
        )

    def _is_softpag_enabled(self) -> bool:
        config = self.softpag
        return (
            self._enabled
            and config is not None
            and not math.isclose(config.scale, 0.0)
            and self._in_window(config.start, config.stop)
        )

    def _is_softpag_computed(self) -> bool:
        """SoftPAG is enabled and this is one of every `pag_every` steps of its window (the first included)."""
        if not self._is_softpag_enabled():
            return False
        config, steps = self.softpag, self._num_inference_steps
        if steps is None:
            return True
        earlier = sum(config.start <= i / steps < config.stop for i in range(self._step))
        return earlier % config.every == 0

    def _perturbed_batch(self) -> bool:
        """This step runs a perturbed cond batch (pag_branch="cond" on a computed step)."""
        return self.softpag is not None and self.softpag.branch == "cond" and self._is_softpag_computed()

    @property
    def num_conditions(self) -> int:
        """1 (cond) + CFG's uncond + SoftPAG's perturbed cond, as run at this step."""
        return 1 + int(self._is_cfg_enabled()) + int(self._perturbed_batch())

    @property
    def is_conditional(self) -> bool:
        """The cond batch and the perturbed batch are conditional; CFG's uncond batch (the second) is not."""
        return not (self._is_cfg_enabled() and self._count_prepared == 2)

    def _batches(self) -> tuple[list[int], list[str]]:
        """(tuple index into the (cond, uncond) inputs, prediction name) of each batch, in run order."""
        indices, names = [0], ["pred_cond"]
        if self._is_cfg_enabled():
            indices, names = indices + [1], names + ["pred_uncond"]
        if self._perturbed_batch():
            indices, names = indices + [0], names + ["pred_cond_perturbed"]
        return indices, names

    def prepare_inputs(self, data: dict) -> list[BlockState]:
        """One BlockState per prediction: cond, [uncond], [perturbed cond] (the same inputs as cond)."""
        return [self._prepare_batch(data, i, name) for i, name in zip(*self._batches(), strict=True)]

    def prepare_inputs_from_block_state(self, data: BlockState, input_fields: dict) -> list[BlockState]:
        """As `prepare_inputs`, reading the fields from a BlockState (the newer modular loops)."""
        return [
            self._prepare_batch_from_block_state(input_fields, data, i, name)
            for i, name in zip(*self._batches(), strict=True)
        ]

    # -- the perturbed call -------------------------------------------------------------------------------

    def _perturbation(self, denoiser: torch.nn.Module) -> SoftPAG:
        """The config resolved against `denoiser` (cached per denoiser)."""
        if self._resolved is None or self._resolved[0] != id(denoiser):
            softpag = SoftPAG(denoiser, self.softpag)
            if len(softpag.group_strengths) != 1:
                raise SoftPAGError(
                    "SoftPAGGuidance takes one head group: pass pag_heads without 'name: ...;' groups"
                )
            self._resolved = (id(denoiser), softpag)
        return self._resolved[1]

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        """Before the perturbed batch (the last one; pag_branch="uncond": CFG's uncond batch, the second): wrap the
        chosen heads' modules and publish their strengths."""
        self._count_prepared += 1
        uncond = self.softpag is not None and self.softpag.branch == "uncond"
        target = 2 if uncond else self.num_conditions
        perturbs = self._is_softpag_computed() and (self._is_cfg_enabled() or not uncond)
        if not (perturbs and self._count_prepared == target):
            return
        softpag = self._perturbation(denoiser)
        (group,) = softpag.group_strengths
        processors = {name: softpag.layout.processor(name) for name in group}
        self.cleanup_models(denoiser)  # a perturbed call left open by an interrupted loop
        scope = CallScope(
            _GuidedBatch(self.softpag.identity, group=group, guider=self), "pag_heads", SoftPAGError
        )
        scope.processors(denoiser, processors, softpag.layout.replaceable)
        scope.hook(denoiser, "softpag-guider", _GuidedBatchHook())
        scope.open()
        self._scope = scope

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        """After the perturbed batch (or when its forward ends, also by an exception): the original processors
        back, the hooks removed."""
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.close(check=False)

    # -- the combination ----------------------------------------------------------------------------------

    def forward(
        self,
        pred_cond: torch.Tensor,
        pred_uncond: torch.Tensor | None = None,
        pred_cond_perturbed: torch.Tensor | None = None,
    ) -> GuiderOutput:
        """eps_u + w_cfg (eps_c - eps_u) + w_pag (eps_c - eps_p), each term only when enabled at this step; between
        `pag_every` steps the last w_pag (eps_c - eps_p); pag_branch="uncond": eps_u is the perturbed uncond."""
        pred = pred_cond
        if pred_uncond is not None:
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        if pred_cond_perturbed is not None:
            self._last_delta = self.softpag.scale * (pred_cond - pred_cond_perturbed)
            pred = pred + self._last_delta
        elif self.softpag is not None and self.softpag.branch == "cond" and self._is_softpag_enabled():
            pred = pred + self._last_delta  # pag_every: a step between two perturbed ones
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)


@dataclass
class _GuidedBatch(PerturbationState):
    """The perturbed batch's state: its head group's strengths (heads,) by module, and the guider that closes it."""

    group: dict[str, torch.Tensor] = field(default_factory=dict)
    guider: SoftPAGGuidance | None = None


class _GuidedBatchHook(ScopeHook):
    """The denoiser's hooks for a perturbed batch: per-row strengths and the text length before the forward; the
    batch's scope closed after it, also when it raises."""

    serves = _GuidedBatch
    always_call = True

    def pre_forward(self, state: _GuidedBatch, module, args, kwargs):
        first = kwargs.get("hidden_states", kwargs.get("x", args[0] if args else None))
        device = (first[0] if isinstance(first, list) else first).device  # Z-Image: one tensor per sample
        state.strengths = {name: u.to(device).expand(len(first), -1) for name, u in state.group.items()}
        context = kwargs.get("encoder_hidden_states")
        state.text_tokens = context.shape[1] if isinstance(context, torch.Tensor) else None

    def post_forward(self, state: _GuidedBatch, module, args, kwargs, output):
        state.guider.cleanup_models(module)
        return output
