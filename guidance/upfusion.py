"""UpFusion's scene-token attention (Kani et al., "UpFusion: Novel View Diffusion from Unposed Sparse View
Observations", ECCV 2024): the denoiser's cross-attention attends to UpSRT's set-latent scene tokens, and the
query side carries the Plücker rays of the query camera.

The official SLT block concatenates the query rays to the image features before `proj_in` (a linear map):
`proj_in([h; r]) = proj_in(h) + W_r r`, so the rays enter the token stream that self-attention, cross-attention
and the feed-forward all read. Placement `"proj_in"` does exactly that: a hook on each conditioned transformer's
`proj_in` adds a learned `W_r r` (zero at initialisation). Placement `"attn2_query"` (the first toy model) adds
`W_r r` to the cross-attention query only. The rays are exact Plücker rays of the query camera at the token grid.

Which rows attend to the scene travels with the call in a `SceneCall`, the state of the call's scope
(`guidance.scope`): handed to the `proj_in` hooks, read by the processors; calls running at once share both: rows with `keep == 0` (classifier-free guidance's
unconditional rows, condition dropout in training) get no ray term and either no cross-attention output (`null_scene`
"no_output", the toy models) or attention to all-zero scene tokens (`null_scene` "zero_tokens", the official
unconditional input, which leaves the layer's output bias); every row gets nothing when the call disables scene
attention (the ablation).

Rays come in two conventions. "opencv" (the toy models): pixel centres, the first input view's OpenCV camera frame,
origin at its centre. "pytorch3d" (the official code, `SLTQueryTransformer._get_ray_condition` and UpSRT's
`get_grid_rays_gpu`): PyTorch3D NDC samples from +1 to -1 that include the image edges, axes x left / y up /
z forward of the first view, origin at the scene centre `distance` in front of it (the official inference cameras
sit at distance 1 from the object, the first one at R = I, T = (0, 0, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from guidance.cameras import plucker_rays
from guidance.config import GuidanceError
from guidance.scope import CallScope, ScopeHook, current
from guidance.swap import attention_modules

REPLACEABLE = ("AttnProcessor2_0", "AttnProcessor")
PLACEMENTS = ("proj_in", "attn2_query")
RAY_CONVENTIONS = ("opencv", "pytorch3d")
NULL_SCENES = ("no_output", "zero_tokens")
_PYTORCH3D_AXES = (
    -1.0,
    -1.0,
    1.0,
)  # OpenCV camera axes (x right, y down, z forward) -> PyTorch3D (x left, y up)


def official_plucker_rays(c2w: torch.Tensor, focal: float, size: int, distance: float) -> torch.Tensor:
    """Plücker rays (..., 6, size, size) of cameras (..., 4, 4) as the official UpFusion code computes them.

    c2w: camera-to-world poses in the first input view's OpenCV frame (as `guidance.cameras`); focal in pixels at
    `size`. The grid is PyTorch3D's `linspace(1, -1, size)` in NDC (image edges included, focal 2 * focal / size),
    the world is the first view's PyTorch3D frame moved to the scene centre `distance` ahead (official W2)."""
    c2w = torch.as_tensor(c2w)
    ndc = torch.linspace(1.0, -1.0, int(size), dtype=c2w.dtype, device=c2w.device)
    y, x = torch.meshgrid(ndc, ndc, indexing="ij")  # rows: top (+1) to bottom; columns: left (+1) to right
    scale = size / (2.0 * float(focal))  # 1 / NDC focal
    camera = torch.stack([-x * scale, -y * scale, torch.ones_like(x)], dim=-1)  # OpenCV camera frame
    directions = (c2w[..., None, None, :3, :3] @ camera[..., None]).squeeze(-1)
    axes = torch.tensor(_PYTORCH3D_AXES, dtype=c2w.dtype, device=c2w.device)
    directions = directions / directions.norm(dim=-1, keepdim=True) * axes
    centre = torch.tensor([0.0, 0.0, float(distance)], dtype=c2w.dtype, device=c2w.device)
    origins = ((c2w[..., :3, 3] - centre) * axes)[..., None, None, :].expand_as(directions)
    rays = torch.cat([directions, torch.linalg.cross(origins, directions, dim=-1)], dim=-1)
    return rays.movedim(-1, -3).contiguous()


def query_plucker_rays(
    c2w: torch.Tensor, focal: float, size: int, convention: str = "opencv", distance: float = 0.0
) -> torch.Tensor:
    """Plücker rays (..., 6, size, size) of query cameras (..., 4, 4) in the named `RAY_CONVENTIONS`."""
    if convention == "opencv":
        return plucker_rays(c2w, focal, size)
    if convention == "pytorch3d":
        return official_plucker_rays(c2w, focal, size, distance)
    raise ValueError(f"convention must be one of {RAY_CONVENTIONS}; got {convention!r}")


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
    convention, distance: how rays are computed (`RAY_CONVENTIONS`; distance: the scene centre, "pytorch3d" only).
    null_scene: what a dropped row's cross-attention gives (`NULL_SCENES`).
    ray_keep: (B,) 1 where a row gets the ray term; None = `keep`.
    """

    query_c2w: torch.Tensor
    focal: float
    size: int
    keep: torch.Tensor | None = None
    enabled: bool = True
    convention: str = "opencv"
    distance: float = 0.0
    null_scene: str = "no_output"
    ray_keep: torch.Tensor | None = None
    _rays: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.convention not in RAY_CONVENTIONS:
            raise ValueError(f"convention must be one of {RAY_CONVENTIONS}; got {self.convention!r}")
        if self.null_scene not in NULL_SCENES:
            raise ValueError(f"null_scene must be one of {NULL_SCENES}; got {self.null_scene!r}")

    @property
    def ray_rows(self) -> torch.Tensor | None:
        """(B,) 1 where a row gets the ray term (`ray_keep`, else `keep`); None = all."""
        return self.keep if self.ray_keep is None else self.ray_keep

    def rays(self, tokens: int, dtype: torch.dtype) -> torch.Tensor:
        """Plücker rays (B, tokens, 6) of the query cameras on a square grid of `tokens` pixels (row-major)."""
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"scene attention needs a square token grid; got {tokens} tokens")
        if side not in self._rays:
            focal = self.focal * side / self.size  # same field of view at the coarser grid
            rays = query_plucker_rays(self.query_c2w.float(), focal, side, self.convention, self.distance)
            self._rays[side] = rays.flatten(2).transpose(1, 2)
        return self._rays[side].to(dtype)


def current_call() -> SceneCall:
    """The SceneCall of the scene_attention_installed scope this thread (context) is in."""
    call = current(SceneCall)
    if call is None:
        raise GuidanceError(
            "scene-token attention ran outside a scene_attention scope (no SceneCall is active)"
        )
    return call


def row_keep(keep: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor | float:
    """(B, 1, 1) factor of the rows kept (`keep` 1), or 1.0 when all are."""
    return 1.0 if keep is None else keep.to(out)[:, None, None]


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
            query = query + ray_query(rays, self.ray_projection) * row_keep(call.ray_rows, query)
        scene = encoder_hidden_states
        if call.null_scene == "zero_tokens":
            scene = scene * row_keep(call.keep, scene)
        keys, values = attn.to_k(scene), attn.to_v(scene)
        out = attn.to_out[1](attn.to_out[0](scene_attention(query, keys, values, attn.heads)))
        if call.null_scene == "no_output":
            out = out * row_keep(call.keep, out)
        return out / attn.rescale_output_factor


def ray_token_term(projection: torch.nn.Module, output: torch.Tensor, call: SceneCall) -> torch.Tensor:
    """`proj_in`'s output plus the call's ray term `W_r r`: (B, C, H, W) (conv proj_in) or (B, H*W, C)."""
    if not call.enabled:
        return output
    tokens = output.shape[-2] * output.shape[-1] if output.ndim == 4 else output.shape[1]
    term = projection(call.rays(tokens, output.dtype).to(output.device))  # (B, H*W, C)
    term = term * row_keep(call.ray_rows, term)
    if output.ndim == 4:
        term = term.transpose(1, 2).reshape(output.shape)
    return output + term


class _RayTerm(ScopeHook):
    """`proj_in`'s hook (placement "proj_in"): the running call's ray term through `projection`."""

    serves = SceneCall

    def __init__(self, projection: torch.nn.Module):
        self.projection = projection

    def post_forward(self, call: SceneCall, module, args, kwargs, output):
        return ray_token_term(self.projection, output, call)


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


def scene_attention_installed(
    models: Mapping[str, torch.nn.Module],
    projections: Mapping[str, torch.nn.Module],
    call: SceneCall,
    placement: str = "attn2_query",
) -> CallScope:
    """The scope of one call (a context manager): scene-token processors on every attn2 of each {prefix: model} and
    the ray term at `placement`; restored always. Calls running at once (threads, nested scopes) share processors
    and hooks.

    projections: {"prefix/module name": ray projection} keyed as `ray_projection_names` gives them."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    scope = CallScope(call, "scene_attention")
    query_terms = placement == "attn2_query"
    for prefix, model in models.items():
        processors = {
            name: SceneTokenAttnProcessor(projections.get(f"{prefix}/{name}") if query_terms else None)
            for name in attention_modules(model, "attn2")
        }
        scope.processors(model, processors, REPLACEABLE)
        if not query_terms:
            for name in conditioned_transformers(model):
                projection = projections.get(f"{prefix}/{name}")
                if projection is not None:
                    proj_in = model.get_submodule(name).proj_in
                    scope.hook(proj_in, f"upfusion-rays-{id(projection)}", _RayTerm(projection))
    return scope
