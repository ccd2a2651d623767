"""The techniques: configs, head selections, SoftPAG math and processors, head search, objectives, structured
cross-attention, UpFusion's scene-token attention. Names are imported on first use (torch loads only then)."""

from __future__ import annotations

from guidance.lazy import lazy_exports

_EXPORTS = {
    "GuidanceError": "guidance.config",
    "SOFTPAG_SETTINGS": "guidance.config",
    "STRUCTURED_SETTINGS": "guidance.config",
    "Setting": "guidance.config",
    "SoftPAGConfig": "guidance.config",
    "SoftPAGError": "guidance.config",
    "StructuredConfig": "guidance.config",
    "StructuredError": "guidance.config",
    "HeadEntry": "guidance.heads",
    "HeadGroup": "guidance.heads",
    "HeadSelection": "guidance.heads",
    "HeadSelectionError": "guidance.heads",
    "HeadSearch": "guidance.search",
    "SearchSettings": "guidance.search",
    "Objective": "guidance.objectives",
    "get_objective": "guidance.objectives",
    "objective_names": "guidance.objectives",
    "register_objective": "guidance.objectives",
    "softpag_attention": "guidance.softpag",
    "layout_of": "guidance.layouts",
    "heads_layout": "guidance.adapters",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
