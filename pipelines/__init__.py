"""diffusers pipelines with SoftPAG, structured cross-attention and UpFusion, and their loading (layer 2; the front
ends built on them are in `tools`). Names are imported on first use (diffusers loads only then)."""

from __future__ import annotations

from guidance.lazy import lazy_exports

_EXPORTS = {
    "HeadHunterPipeline": "pipelines.headhunter",
    "HeadHunterSD3Pipeline": "pipelines.headhunter",
    "HeadHunterFluxPipeline": "pipelines.headhunter",
    "HeadHunterSDPipeline": "pipelines.headhunter",
    "HeadHunterSDXLPipeline": "pipelines.headhunter",
    "StructuredDiffusionPipeline": "pipelines.headhunter",
    "UpFusionPipeline": "pipelines.upfusion",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
