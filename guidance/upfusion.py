"""UpFusion's scene-token attention (Kani et al., "UpFusion: Novel View Diffusion from Unposed Sparse View
Observations", ECCV 2024): the denoiser's cross-attention attends to UpSRT's set-latent scene tokens, and the
query side carries the Plücker rays of the query camera.

The official SLT block concatenates the query rays to the image features before `proj_in` (a linear map), so
the query of each image token is `W [h; r] = W_h h + W_r r`; here the processor adds a learned `W_r r` (zero at
initialisation) to `attn.to_q(h)`. The rays are exact Plücker rays of the query camera at the layer's token grid.
Which rows attend to the scene travels with the call in a `SceneCall` (no globals): rows with `keep == 0`
(classifier-free guidance's unconditional rows, condition dropout in training) and every row when the call
disables scene attention (the ablation) get no cross-attention output at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from guidance.cameras import plucker_rays
from guidance.swap import attention_modules, swapped_processors

REPLACEABLE = ("AttnProcessor2_0", "AttnProcessor", "SceneTokenAttnProcessor")


def scene_attention(
    query: torch.Tensor, scene_keys: torch.Tensor, scene_values: torch.Tensor, heads: int
) -> torch.Tensor:
    """Multi-head attention of image tokens (B, L, C) to scene tokens (B, T, C) with one SDPA call -> (B, L, C)."""
    batch, length, channels = query.shape
    split = [
        t.unflatten(-1, (heads, channels // heads)).transpose(1, 2) for t in (query, scene_keys, scene_values)
    ]
    out = F.scaled_dot_product_attention(*split)
    return out.transpose(1, 2).reshape(batch, length, channels)


def ray_query(rays: torch.Tensor, projection: torch.nn.Module | None) -> torch.Tensor | float:
    """The query-ray term `W_r r` (B, L, C) from per-token Plücker rays (B, L, 6); 0 without a projection."""
    return 0.0 if projection is None else projection(rays)


@dataclass
class SceneCall:
    """Per-call state of scene-token attention: query cameras, which rows attend, and a per-resolution ray cache.

    query_c2w: (B, 4, 4) query cameras relative to the first input view, one per batch row.
    focal, size: the query camera's focal length in pixels at image size `size`.
    keep: (B,) 1 where a row attends to the scene, 0 where it is dropped (CFG's unconditional rows); None = all.
    enabled: False drops scene-token attention for every row (the ablation).
    """

    query_c2w: torch.Tensor
    focal: float
    size: int
    keep: torch.Tensor | None = None
    enabled: bool = True
    _rays: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def rays(self, tokens: int, dtype: torch.dtype) -> torch.Tensor:
        """Plücker rays (B, tokens, 6) of the query cameras on a square grid of `tokens` pixels (row-major)."""
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"scene attention needs a square token grid; got {tokens} tokens")
        if side not in self._rays:
            focal = self.focal * side / self.size  # same field of view at the coarser grid
            rays = plucker_rays(self.query_c2w.float(), focal, side)  # (B, 6, side, side)
            self._rays[side] = rays.flatten(2).transpose(1, 2)
        return self._rays[side].to(dtype)


class SceneTokenAttnProcessor:
    """Cross-attention processor: image tokens (+ query rays) attend to the scene tokens in `encoder_hidden_states`."""

    def __init__(self, call: SceneCall, ray_projection: torch.nn.Module | None = None):
        self.call, self.ray_projection = call, ray_projection

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        if encoder_hidden_states is None:
            raise ValueError("SceneTokenAttnProcessor serves cross-attention layers only (attn2)")
        if not self.call.enabled:
            return torch.zeros_like(hidden_states)  # ablation: the layer adds nothing to its residual stream
        rays = self.call.rays(hidden_states.shape[1], hidden_states.dtype).to(hidden_states.device)
        query = attn.to_q(hidden_states) + ray_query(rays, self.ray_projection)
        keys, values = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        out = attn.to_out[1](attn.to_out[0](scene_attention(query, keys, values, attn.heads)))
        if self.call.keep is not None:
            out = out * self.call.keep.to(out)[:, None, None]
        return out / attn.rescale_output_factor


def ray_projection_names(model: torch.nn.Module, prefix: str) -> list[str]:
    """Keys `prefix/module name` of the cross-attention layers (attn2) of a UNet or ControlNet, in order."""
    return [f"{prefix}/{name}" for name in attention_modules(model, "attn2")]


@contextmanager
def scene_attention_installed(
    models: Mapping[str, torch.nn.Module], projections: Mapping[str, torch.nn.Module], call: SceneCall
) -> Iterator[None]:
    """Install a SceneTokenAttnProcessor on every attn2 of each {prefix: model} for the body; restore always.

    projections: {"prefix/module name": ray projection}; a missing key means no ray term on that layer."""
    with ExitStack() as stack:
        for prefix, model in models.items():
            processors = {
                name: SceneTokenAttnProcessor(call, projections.get(f"{prefix}/{name}"))
                for name in attention_modules(model, "attn2")
            }
            stack.enter_context(swapped_processors(model, processors, REPLACEABLE, "scene_attention"))
        yield
