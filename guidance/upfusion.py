"""UpFusion's scene-token attention (Kani et al., "UpFusion: Novel View Diffusion from Unposed Sparse View
Observations", ECCV 2024): the denoiser's cross-attention attends to UpSRT's set-latent scene tokens, and the
query side carries the Plücker rays of the query camera.

The official SLT block concatenates the query rays to the image features before `proj_in` (a linear map):
`proj_in([h; r]) = proj_in(h) + W_r r`, so the rays enter the token stream that self-attention, cross-attention
and the feed-forward all read. Placement `"proj_in"` does exactly that: a hook on each conditioned transformer's
`proj_in` adds a learned `W_r r` (zero at initialisation). Placement `"attn2_query"` (the first toy model) adds
`W_r r` to the cross-attention query only. The rays are exact Plücker rays of the query camera at the token grid.

Which rows attend to the scene travels with the call in a `SceneCall`, read from a context variable by processors
and hooks that calls running at once share (`guidance.swap`): rows with `keep == 0` (classifier-free guidance's
unconditional rows, condition dropout in training) and every row when the call disables scene attention (the
ablation) get no cross-attention output and no ray term.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from guidance.cameras import plucker_rays
from guidance.config import GuidanceError
from guidance.swap import attention_modules, shared_hooks, swapped_processors

REPLACEABLE = ("AttnProcessor2_0", "AttnProcessor")
PLACEMENTS = ("proj_in", "attn2_query")


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


_CALL: ContextVar[SceneCall | None] = ContextVar("upfusion_scene_call", default=None)


def current_call() -> SceneCall:
    """The SceneCall of the scene_attention_installed scope this thread (context) is in."""
    call = _CALL.get()
    if call is None:
        raise GuidanceError(
            "scene-token attention ran outside a scene_attention scope (no SceneCall is active)"
        )
    return call


def row_keep(call: SceneCall, out: torch.Tensor) -> torch.Tensor | float:
    """(B, 1, 1) factor of the rows that attend to the scene, or 1.0 when all do."""
    return 1.0 if call.keep is None else call.keep.to(out)[:, None, None]


class SceneTokenAttnProcessor:
    """Cross-attention processor: image tokens (+ query rays) attend to the scene tokens in `encoder_hidden_states`.

    The call's state comes from the active SceneCall, so calls running at once share one processor per layer."""

    def __init__(self, ray_projection: torch.nn.Module | None = None):
        self.ray_projection = ray_projection
        self.share_key = ("upfusion-scene", id(ray_projection))

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        if encoder_hidden_states is None:
            raise ValueError("SceneTokenAttnProcessor serves cross-attention layers only (attn2)")
        call = current_call()
        if not call.enabled:
            return torch.zeros_like(hidden_states)  # ablation: the layer adds nothing to its residual stream
        query = attn.to_q(hidden_states)
        if self.ray_projection is not None:
            rays = call.rays(hidden_states.shape[1], hidden_states.dtype).to(hidden_states.device)
            query = query + ray_query(rays, self.ray_projection)
        keys, values = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        out = attn.to_out[1](attn.to_out[0](scene_attention(query, keys, values, attn.heads)))
        return out * row_keep(call, out) / attn.rescale_output_factor


def ray_token_term(projection: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
    """`proj_in`'s output plus the call's ray term `W_r r`: (B, C, H, W) (conv proj_in) or (B, H*W, C)."""
    call = current_call()
    if not call.enabled:
        return output
    tokens = output.shape[-2] * output.shape[-1] if output.ndim == 4 else output.shape[1]
    term = projection(call.rays(tokens, output.dtype).to(output.device))  # (B, H*W, C)
    term = term * row_keep(call, term)
    if output.ndim == 4:
        term = term.transpose(1, 2).reshape(output.shape)
    return output + term


def _proj_in_hook(projection: torch.nn.Module):
    return lambda module, args, output: ray_token_term(projection, output)


def conditioned_transformers(model: torch.nn.Module) -> list[str]:
    """Names of the transformers (Transformer2DModel) that hold the cross-attention layers, in order."""
    names = [name.split(".transformer_blocks.")[0] for name in attention_modules(model, "attn2")]
    return list(dict.fromkeys(names))


def ray_projection_names(model: torch.nn.Module, prefix: str, placement: str = "attn2_query") -> list[str]:
    """Keys `prefix/module name` of the layers that get a ray term: attn2 modules, or their transformers."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    names = (
        attention_modules(model, "attn2") if placement == "attn2_query" else conditioned_transformers(model)
    )
    return [f"{prefix}/{name}" for name in names]


@contextmanager
def scene_attention_installed(
    models: Mapping[str, torch.nn.Module],
    projections: Mapping[str, torch.nn.Module],
    call: SceneCall,
    placement: str = "attn2_query",
) -> Iterator[None]:
    """Scene-token processors on every attn2 of each {prefix: model} and the ray term at `placement` for the
    body; restored always. Calls running at once (threads, nested scopes) share processors and hooks.

    projections: {"prefix/module name": ray projection} keyed as `ray_projection_names` gives them."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    token = _CALL.set(call)
    try:
        with ExitStack() as stack:
            for prefix, model in models.items():
                query_terms = placement == "attn2_query"
                processors = {
                    name: SceneTokenAttnProcessor(
                        projections.get(f"{prefix}/{name}") if query_terms else None
                    )
                    for name in attention_modules(model, "attn2")
                }
                stack.enter_context(swapped_processors(model, processors, REPLACEABLE, "scene_attention"))
                if not query_terms:
                    for name in conditioned_transformers(model):
                        projection = projections.get(f"{prefix}/{name}")
                        if projection is None:
                            continue
                        proj_in = model.get_submodule(name).proj_in
                        register = lambda m=proj_in, p=projection: [m.register_forward_hook(_proj_in_hook(p))]  # noqa: E731
                        stack.enter_context(
                            shared_hooks(proj_in, f"upfusion-rays-{id(projection)}", register)
                        )
            yield
    finally:
        _CALL.reset(token)
