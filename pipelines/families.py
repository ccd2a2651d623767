"""SoftPAG pipelines for the newer diffusers families (the adapter runs them on the generic interceptor).

Imported by `pipelines.headhunter` when `HeadHunterPipeline.from_pretrained` meets a class name it does not know;
each class registers itself with its diffusers parent's name. Every class keeps the parent's whole `__call__` and
adds the `pag_*` arguments of `SoftPAGMixin.__call__`. Layer numbering (see `guidance.layouts.FAMILIES`):

| pipeline | layers | where the cond rows are |
|---|---|---|
| Flux2Pipeline | double-stream blocks 0..D-1, then single-stream D..D+S-1 | every row (guidance-distilled, no CFG batch) |
| QwenImagePipeline | `transformer_blocks[i]` | every row of the first call (true CFG runs uncond after it) |
| ZImagePipeline | `layers[i]` (not the refiners) | the first half with CFG ([cond, uncond]), else every row |
| ChromaPipeline | double then single blocks, as FLUX.1 | every row of the first call (uncond runs after it) |
| WanPipeline | `blocks[i].attn1` (self-attention over every frame's tokens) | every row of the first call |
"""

from __future__ import annotations

from diffusers import ChromaPipeline, Flux2Pipeline, QwenImagePipeline, WanPipeline, ZImagePipeline

from guidance.batch_rows import CondRows
from guidance.config import SoftPAGError
from pipelines.headhunter import SoftPAGMixin, register_pipeline


class GenericSoftPAGMixin(SoftPAGMixin):
    """`SoftPAGMixin` for families that run cond and uncond as separate calls, through the generic interceptor (the
    only path these families have; on SD3 or FLUX.1 it stands in for their fast path, as the speed benchmark
    measures)."""

    generic_adapter = True

    def _cond_rows(self, call_kwargs: dict) -> CondRows:
        """Families that run cond and uncond as separate calls, cond first: every row of the main call is cond."""
        return CondRows(None)


class HeadHunterFlux2Pipeline(GenericSoftPAGMixin, Flux2Pipeline):
    """Flux2Pipeline with SoftPAG; layers 0..D-1 are double-stream blocks, D.. the single-stream blocks."""

    _cfg_argument = None  # guidance-distilled: no uncond prediction (pag_branch="uncond" is refused)


class HeadHunterQwenImagePipeline(GenericSoftPAGMixin, QwenImagePipeline):
    """QwenImagePipeline with SoftPAG on the joint [text, image] attention of `transformer_blocks`."""

    _cfg_argument = "true_cfg_scale"


class HeadHunterChromaPipeline(GenericSoftPAGMixin, ChromaPipeline):
    """ChromaPipeline with SoftPAG; layers number the double-stream then the single-stream blocks, as FLUX.1."""


class HeadHunterWanPipeline(GenericSoftPAGMixin, WanPipeline):
    """WanPipeline (text-to-video) with SoftPAG on the self-attention of `blocks`: every frame's tokens."""

    def _check_call(self, call_kwargs: dict) -> None:
        if self.transformer_2 is not None:
            raise SoftPAGError(
                "pag_heads: this Wan 2.2 pipeline switches to transformer_2 for the low-noise steps, which SoftPAG "
                "does not perturb; use a Wan 2.1 pipeline (transformer_2=None)"
            )


class HeadHunterZImagePipeline(GenericSoftPAGMixin, ZImagePipeline):
    """ZImagePipeline with SoftPAG on `layers` (joint identity: the per-sample padded sequence has no fixed
    image/text split)."""

    _cfg_off_at = 0.0  # Z-Image's CFG is cond + w (cond - uncond), on for w > 0

    def _cond_rows(self, call_kwargs: dict) -> CondRows:
        """Z-Image batches CFG as [cond, uncond]."""
        return CondRows("first")

    def _to_prediction(self):
        """Z-Image hands `scheduler.step` the negated, frame-squeezed output (`noise_pred = -noise_pred`)."""
        return lambda delta: -delta.squeeze(2)

    def _check_call(self, call_kwargs: dict) -> None:
        if float(call_kwargs.get("cfg_truncation", 1.0)) < 1.0:
            raise SoftPAGError(
                "pag_heads with cfg_truncation < 1 is not supported: the CFG batch changes size within the call"
            )


for _cls, _parents in (
    (HeadHunterFlux2Pipeline, ("Flux2Pipeline",)),
    (HeadHunterQwenImagePipeline, ("QwenImagePipeline",)),
    (HeadHunterZImagePipeline, ("ZImagePipeline",)),
    (HeadHunterChromaPipeline, ("ChromaPipeline",)),
    (HeadHunterWanPipeline, ("WanPipeline",)),
):
    register_pipeline(_cls, _parents)
