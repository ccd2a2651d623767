"""UpFusion (Kani et al., "UpFusion: Novel View Diffusion from Unposed Sparse View Observations", ECCV 2024):
novel views of an object from 1-6 images whose poses are unknown.

Components: `upsrt` (UpSRT, the pose-free scene transformer: set-latent scene tokens and a ray decoder),
`unet` (the denoiser), `controlnet` (a zero-initialised ControlNet fed with UpSRT's query-view feature map and the
query Plücker rays), `ray_queries` (the learned query-ray term of the scene-token attention) and a DDIM
`scheduler`. Two paths, chosen by the folder:

- pixel path (the toy models): UpSRT with its own patch encoder; the UNet and the ControlNet both attend to the
  scene tokens; the diffusion runs on pixels.
- latent path (the paper's configuration, `CONFIGS["paper"]`, as the official upfusion3d/upfusion code): a frozen
  DINOv2 `image_encoder` whose layer-8 attention keys feed `PaperUpSRT`; an SD1.5 UNet that reads the prompt
  through `text_encoder`/`tokenizer`; scene-token blocks only in the ControlNet; the diffusion runs on `vae`
  latents (256 px, 32 x 32 latents); the official call defaults (`PRESETS["paper"]`).

    pipe = UpFusionPipeline.from_pretrained("assets/toy-upfusion")
    views = pipe(images=[img0, img1], query_cameras=[(90, 0), (180, 20)], num_inference_steps=25).images

Query cameras are relative to the first input view: (azimuth, elevation) in degrees on an orbit around the
object at the training distance, or 4x4 camera-to-world matrices in the first view's camera frame (OpenCV).
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    ModelMixin,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, Dinov2Config, Dinov2Model

from guidance.cameras import check_pose, plucker_rays, query_camera
from guidance.config import MAX_INPUT_VIEWS, MAX_QUERY_CAMERAS, UPFUSION_SETTINGS
from guidance.swap import one_call_per_scheduler
from guidance.upfusion import (
    PLACEMENTS,
    SceneCall,
    official_plucker_rays,
    ray_projection_names,
    scene_attention_installed,
)

MAX_VIEWS = MAX_INPUT_VIEWS  # the toy world's trainer samples up to this many inputs
HINTS = ("bottleneck", "hidden")
OUTPUT_TYPES = ("pil", "np", "pt")

# ----------------------------------------------------------------------------------------------------------
# UpSRT: the pose-free scene transformer (UpFusion Sec. 3.1, after SRT / UpSRT of Sajjadi et al.)
# ----------------------------------------------------------------------------------------------------------


def fourier_rays(rays: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Sinusoidal encoding of rays (..., 6) -> (..., 6 + 12 * frequencies), as SRT encodes ray origins/directions."""
    scales = (2.0 ** torch.arange(frequencies, dtype=rays.dtype, device=rays.device)) * math.pi
    angles = (rays[..., None] * scales).flatten(-2)
    return torch.cat([rays, angles.sin(), angles.cos()], dim=-1)


class _RayDecoderBlock(nn.Module):
    """Query rays cross-attend to the scene tokens, then an MLP (SRT's decoder: no attention between rays)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_rays, self.norm_scene, self.norm_mlp = (
            nn.LayerNorm(dim),
            nn.LayerNorm(dim),
            nn.LayerNorm(dim),
        )
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, rays: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        scene = self.norm_scene(scene)
        rays = rays + self.attention(self.norm_rays(rays), scene, scene, need_weights=False)[0]
        return rays + self.mlp(self.norm_mlp(rays))


class UpSRT(ModelMixin, ConfigMixin):
    """Pose-free scene representation transformer: views -> set-latent scene tokens; query rays -> RGB + features.

    Each view gives patch tokens (a small conv patch encoder, or DINOv2 as in the paper when `dinov2_config` is
    set) plus a learned patch-ID embedding and a camera-ID embedding (view 0 is the canonical view, all others
    share one "other" ID); a transformer encoder over all views' tokens gives the scene tokens. The decoder
    maps each query ray (Plücker coordinates relative to the first view) to a feature vector and a colour.
    `focal` (pixels at `image_size`) and `distance` describe the query cameras the model was trained on.

    `hint` says which features feed the diffusion model: "hidden" (the official code) returns the decoder's
    full `dim`-wide hidden state and colours it with an MLP dim -> 2*feature_dim -> feature_dim -> 3 (the
    official 768 -> 256 -> 64 -> 3); "bottleneck" (the first toy model) returns a `feature_dim`-wide linear map
    of it and colours that linearly.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 128,
        heads: int = 4,
        encoder_layers: int = 4,
        decoder_layers: int = 2,
        feature_dim: int = 64,
        ray_frequencies: int = 6,
        focal: float = 40.0,
        distance: float = 3.0,
        dinov2_config: dict | None = None,
        hint: str = "bottleneck",
    ):
        super().__init__()
        if hint not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}; got {hint!r}")
        if dinov2_config is None:
            self.patch_encoder = nn.Sequential(
                nn.Conv2d(3, dim // 2, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(dim // 2, dim, patch_size, stride=patch_size),
                nn.GELU(),
                nn.Conv2d(dim, dim, 1),
            )
            patches = (image_size // patch_size) ** 2
        else:
            from transformers import Dinov2Config, Dinov2Model

            self.dinov2 = Dinov2Model(Dinov2Config(**dinov2_config))
            self.dinov2_projection = nn.Linear(self.dinov2.config.hidden_size, dim)
            patches = (image_size // self.dinov2.config.patch_size) ** 2
        self.patch_id = nn.Parameter(torch.randn(patches, dim) * 0.02)
        self.camera_id = nn.Embedding(2, dim)  # 0: the canonical first view, 1: every other view
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, encoder_layers, enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(dim)
        self.ray_embedding = nn.Sequential(
            nn.Linear(6 + 12 * ray_frequencies, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.decoder = nn.ModuleList([_RayDecoderBlock(dim, heads) for _ in range(decoder_layers)])
        self.decoder_norm = nn.LayerNorm(dim)
        if hint == "hidden":
            self.rgb_head = nn.Sequential(
                nn.Linear(dim, 2 * feature_dim), nn.GELU(), nn.Linear(2 * feature_dim, feature_dim), nn.GELU(),
                nn.Linear(feature_dim, 3),
            )  # fmt: skip
        else:
            self.feature_head = nn.Linear(dim, feature_dim)
            self.rgb_head = nn.Linear(feature_dim, 3)

    @property
    def hint_channels(self) -> int:
        """Channels of the features `render` returns (the diffusion hint adds 6 ray channels)."""
        return self.config.dim if self.config.hint == "hidden" else self.config.feature_dim

    def _patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) in [0, 1] -> (M, P, dim) patch tokens."""
        if self.config.dinov2_config is None:
            return self.patch_encoder(images * 2 - 1).flatten(2).transpose(1, 2)
        mean = images.new_tensor([0.485, 0.456, 0.406])[:, None, None]
        std = images.new_tensor([0.229, 0.224, 0.225])[:, None, None]
        hidden = self.dinov2(pixel_values=(images - mean) / std).last_hidden_state
        return self.dinov2_projection(hidden[:, 1:])  # drop the CLS token; patch tokens only

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Set-latent scene tokens (B, N * P, dim) from unposed views (B, N, 3, S, S) in [0, 1]."""
        batch, views = images.shape[:2]
        tokens = self._patch_tokens(images.flatten(0, 1)).unflatten(0, (batch, views))  # (B, N, P, D)
        camera = torch.ones(views, dtype=torch.long, device=images.device)
        camera[0] = 0
        tokens = tokens + self.patch_id + self.camera_id(camera)[:, None]
        return self.encoder_norm(self.encoder(tokens.flatten(1, 2)))

    def decode_rays(self, scene: torch.Tensor, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours (B, R, 3) in [0, 1] and features (B, R, hint_channels) of query rays (B, R, 6)."""
        x = self.ray_embedding(fourier_rays(rays, self.config.ray_frequencies))
        for block in self.decoder:
            x = block(x, scene)
        features = self.decoder_norm(x)
        if self.config.hint == "bottleneck":
            features = self.feature_head(features)
        return torch.sigmoid(self.rgb_head(features)), features

    def query_rays(self, query_c2w: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Plücker rays (..., 6, s, s) of query cameras (..., 4, 4) relative to the first view (s: image_size)."""
        size = self.config.image_size if size is None else size
        focal = self.config.focal * (size / self.config.image_size)  # the same field of view at any grid
        return plucker_rays(query_c2w, focal, size).to(self.dtype)

    def render(
        self, scene: torch.Tensor, query_c2w: torch.Tensor, size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Render query views (B, Q, 4, 4) on an s x s grid (s: image_size): colours (B, Q, 3, s, s) and feature
        maps (B, Q, hint_channels, s, s)."""
        size = self.config.image_size if size is None else size
        rays = self.query_rays(query_c2w, size)  # (B, Q, 6, s, s)
        batch, queries = rays.shape[:2]
        flat = rays.permute(0, 1, 3, 4, 2).reshape(batch, -1, 6)
        rgb, features = self.decode_rays(scene, flat)

        def to_maps(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, queries, size, size, -1).permute(0, 1, 4, 2, 3)

        return to_maps(rgb), to_maps(features)

    def forward(self, images: torch.Tensor, query_c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the views (B, N, 3, S, S) and render the query cameras (B, Q, 4, 4): (colours, features)."""
        return self.render(self.encode(images), query_c2w)


# ----------------------------------------------------------------------------------------------------------
# The paper's UpSRT over DINOv2 keys (upfusion3d/upfusion: dino/model/model.py, upsrt/model/*.py)
# ----------------------------------------------------------------------------------------------------------

DINOV2_MEAN, DINOV2_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RAY_CHUNK = 7168  # query rays decoded at once (the official `num_pixel_queries`)
CANONICAL_CAMERA_ID, OTHER_CAMERA_ID = 1 / 3 + 0.05, 2 / 3 + 0.05  # the official camera IDs


def harmonic_code(x: torch.Tensor, frequencies: int, start: int) -> torch.Tensor:
    """(..., C) -> (..., 2 * frequencies * C): sin then cos of x * 2^k * pi, k = start .. start + frequencies - 1,
    frequency-major (the official `positional_encoding` / `positionally_encode_ids`; no raw input)."""
    scales = (2.0 ** torch.arange(start, start + frequencies, dtype=x.dtype, device=x.device)) * math.pi
    angles = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def dinov2_position_embeddings(position_embeddings: torch.Tensor, side: int) -> torch.Tensor:
    """(1, 1 + M*M, C) -> (1, 1 + side*side, C) as the torch.hub DINOv2 interpolates them: bicubic with
    `scale_factor` (side + 0.1) / M, no antialias (transformers' Dinov2 resizes to `size` instead)."""
    grid = math.isqrt(position_embeddings.shape[1] - 1)
    if grid == side:
        return position_embeddings
    cls, patches = position_embeddings[:, :1], position_embeddings[:, 1:].float()
    patches = patches.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    scale = (side + 0.1) / grid
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, side * side, -1).to(position_embeddings.dtype)
    return torch.cat([cls, patches], dim=1)


def dinov2_keys(dinov2: Dinov2Model, images: torch.Tensor, layer: int, size: int) -> torch.Tensor:
    """DINOv2 key features (M, P, C) of images (M, 3, S, S) in [0, 1]: the key part of block `layer`'s attention
    input projection, CLS token dropped, as the official hook on `blocks.8.attn.qkv` keeps `out[:, 1:, C:2C]`.

    Preprocessing as the official `DINOv2KeyExtractor`: bicubic resize to `size` (a tensor resize, no
    antialias), ImageNet normalisation; blocks after `layer` are not run."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    x = (x - x.new_tensor(DINOV2_MEAN)[:, None, None]) / x.new_tensor(DINOV2_STD)[:, None, None]
    embeddings = dinov2.embeddings
    tokens = embeddings.patch_embeddings(x.to(embeddings.cls_token.dtype))
    tokens = torch.cat([embeddings.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    side = size // dinov2.config.patch_size
    tokens = tokens + dinov2_position_embeddings(embeddings.position_embeddings, side)
    for block in dinov2.encoder.layer[:layer]:
        tokens = block(tokens)
    block = dinov2.encoder.layer[layer]
    return block.attention.k_proj(block.norm1(tokens))[:, 1:]


class _OfficialBlock(nn.Module):
    """The official UpSRT transformer block: pre-norm attention (self-attention, or cross-attention to the unnormed
    `memory`) with bias-free projections, then a GELU MLP; dropout is inactive at inference."""

    def __init__(self, dim: int, heads: int, ff_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=False)
        self.ff = FeedForward(dim, inner_dim=ff_dim, activation_fn="gelu")

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), encoder_hidden_states=memory)
        return x + self.ff(self.norm2(x))


class PaperUpSRT(ModelMixin, ConfigMixin):
    """UpSRT as the official UpFusion code builds it, over DINOv2 key features (not poses).

    Encoder: per patch, [DINOv2 keys; harmonic code of the intrinsics-only Plücker ray through the patch's top-left
    corner; harmonic patch ID; harmonic camera ID (view 0 canonical)] -> linear to `dim` -> `encoder_layers`
    self-attention blocks (no final norm). Decoder: the harmonic code of each query Plücker ray -> linear to `dim`
    -> `decoder_layers` cross-attention-only blocks -> the `dim`-wide features (the official
    "pre_rgb_mlp_features", the diffusion hint) and an RGB MLP dim -> rgb_dims -> 3 with ReLUs and a sigmoid.
    Rays follow the official PyTorch3D conventions (`guidance.upfusion.official_plucker_rays`); `focal` is in pixels
    at `image_size` (the official 4.5 in NDC = 576 px at 256 px) and `distance` is the scene centre's distance.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 256,
        feature_size: int = 224,
        feature_layer: int = 8,
        feature_dim: int = 768,
        patches: int = 16,
        dim: int = 768,
        heads: int = 12,
        ff_dim: int = 1024,
        encoder_layers: int = 8,
        decoder_layers: int = 4,
        ray_frequencies: int = 15,
        start_frequency: int = -6,
        rgb_dims: Sequence[int] = (256, 64),
        focal: float = 576.0,
        distance: float = 1.0,
    ):
        super().__init__()
        codes = 12 * ray_frequencies + 2 * ray_frequencies + 2 * ray_frequencies  # ray, patch ID, camera ID
        self.scene_projection = nn.Linear(feature_dim + codes, dim)
        self.encoder = nn.ModuleList([_OfficialBlock(dim, heads, ff_dim) for _ in range(encoder_layers)])
        self.ray_projection = nn.Linear(12 * ray_frequencies, dim)
        self.decoder = nn.ModuleList([_OfficialBlock(dim, heads, ff_dim) for _ in range(decoder_layers)])
        widths = (dim, *rgb_dims)
        layers = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.rgb_head = nn.Sequential(*layers, nn.Linear(widths[-1], 3))

    @property
    def hint_channels(self) -> int:
        """Channels of the features `render` returns (the diffusion hint adds 6 ray channels)."""
        return self.config.dim

    def _code(self, x: torch.Tensor) -> torch.Tensor:
        return harmonic_code(x, self.config.ray_frequencies, self.config.start_frequency)

    def view_codes(self, views: int, device: torch.device) -> torch.Tensor:
        """(views, P, 16 * ray_frequencies) per-patch codes: intrinsics-only ray, patch ID, camera ID."""
        side, count = self.config.patches, self.config.patches**2
        corners = torch.linspace(1.0, -1.0, side + 1, device=device)[
            :-1
        ]  # NDC top-left corners of the patches
        y, x = torch.meshgrid(corners, corners, indexing="ij")
        scale = self.config.image_size / (2.0 * self.config.focal)  # 1 / NDC focal
        directions = torch.stack([x * scale, y * scale, torch.ones_like(x)], dim=-1).reshape(count, 3)
        directions = directions / directions.norm(dim=-1, keepdim=True)  # identity extrinsics: o = 0
        rays = torch.cat([directions, torch.zeros_like(directions)], dim=-1)
        ids = (torch.arange(1, count + 1, dtype=torch.float64, device=device) / count).float()[:, None]
        camera = torch.full((views, 1), OTHER_CAMERA_ID, device=device)
        camera[0] = CANONICAL_CAMERA_ID
        per_patch = torch.cat([self._code(rays), self._code(ids)], dim=-1).expand(views, -1, -1)
        return torch.cat([per_patch, self._code(camera)[:, None].expand(-1, count, -1)], dim=-1)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Set-latent scene tokens (B, N * P, dim) from DINOv2 key features (B, N, P, feature_dim) of unposed views."""
        batch, views = features.shape[:2]
        codes = self.view_codes(views, features.device).to(features.dtype).expand(batch, -1, -1, -1)
        x = self.scene_projection(torch.cat([features, codes], dim=-1)).flatten(1, 2)
        for block in self.encoder:
            x = block(x)
        return x

    def decode_rays(self, scene: torch.Tensor, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours (B, R, 3) in [0, 1] and features (B, R, dim) of Plücker query rays (B, R, 6), in chunks."""
        chunks = []
        for chunk in rays.split(RAY_CHUNK, dim=1):
            x = self.ray_projection(self._code(chunk))
            for block in self.decoder:
                x = block(x, scene)
            chunks.append(x)
        features = torch.cat(chunks, dim=1)
        return torch.sigmoid(self.rgb_head(features)), features

    def query_rays(self, query_c2w: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Official Plücker rays (..., 6, s, s) of query cameras (..., 4, 4) relative to the first view."""
        size = self.config.image_size if size is None else size
        focal = self.config.focal * (size / self.config.image_size)
        return official_plucker_rays(query_c2w, focal, size, self.config.distance).to(self.dtype)

    def render(
        self, scene: torch.Tensor, query_c2w: torch.Tensor, size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Render query views (B, Q, 4, 4) on an s x s grid (s: image_size): colours (B, Q, 3, s, s) and feature
        maps (B, Q, dim, s, s)."""
        rays = self.query_rays(query_c2w, size)  # (B, Q, 6, s, s)
        batch, queries, _, side = rays.shape[:4]
        rgb, features = self.decode_rays(scene, rays.permute(0, 1, 3, 4, 2).reshape(batch, -1, 6))

        def to_maps(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, queries, side, side, -1).permute(0, 1, 4, 2, 3)

        return to_maps(rgb), to_maps(features)


class UpFusionControlNetModel(ControlNetModel):
    """ControlNetModel whose hint enters through one zero-initialised 3x3 conv (the official `input_hint_block`,
    hint at latent resolution) instead of diffusers' strided conditioning embedding; its
    `conditioning_embedding_out_channels` is unused."""

    @functools.wraps(ControlNetModel.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        conv = nn.Conv2d(self.config.conditioning_channels, self.config.block_out_channels[0], 3, padding=1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        self.controlnet_cond_embedding = conv


class SceneRayQueries(ModelMixin, ConfigMixin):
    """The learned query-ray term W_r r of every scene-conditioned layer (zero at initialisation).

    UpFusion's SLT block concatenates the Plücker rays to the image features before its input projection.
    `placement` "proj_in" adds W_r r to each conditioned transformer's `proj_in` output (the official placement:
    self-attention, cross-attention and the feed-forward all see it); "attn2_query" (the first toy model) to the
    cross-attention query only. `layers` are the "prefix/module name" keys of guidance.upfusion, `dims` widths."""

    @register_to_config
    def __init__(self, layers: Sequence[str] = (), dims: Sequence[int] = (), placement: str = "attn2_query"):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
        self.projections = nn.ModuleList([nn.Linear(6, d) for d in dims])
        for projection in self.projections:
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)

    def mapping(self) -> dict[str, nn.Module]:
        """{layer key: projection} for guidance.upfusion.scene_attention_installed."""
        return dict(zip(self.config.layers, self.projections))


def denoiser_output(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    scene: torch.Tensor,
    hint: torch.Tensor,
    prompt_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The UNet's prediction with the ControlNet residuals; scene-token processors must be installed by the caller.

    The ControlNet attends to the scene tokens; the UNet to `prompt_embeds` when given (the official model), else
    to the scene tokens too (the toy models)."""
    down, mid = controlnet(
        sample, timestep, encoder_hidden_states=scene, controlnet_cond=hint, return_dict=False
    )
    context = scene if prompt_embeds is None else prompt_embeds
    return unet(
        sample, timestep, encoder_hidden_states=context, down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample  # fmt: skip


def diffusion_hint(
    upsrt: UpSRT | PaperUpSRT, features: torch.Tensor, query_c2w: torch.Tensor
) -> torch.Tensor:
    """The ControlNet hint (Q, hint_channels + 6, s, s): UpSRT's query-view features and the query Plücker rays
    on the features' grid."""
    return torch.cat([features, upsrt.query_rays(query_c2w, features.shape[-1])], dim=1)


# ----------------------------------------------------------------------------------------------------------
# Named configurations
# ----------------------------------------------------------------------------------------------------------

CONFIGS: dict[str, dict] = {
    # the shipped toy model (32 px pixel space, CPU-trainable)
    "toy": {
        "upsrt": {"image_size": 32, "patch_size": 4, "dim": 96, "heads": 4, "encoder_layers": 3,
                  "decoder_layers": 2, "feature_dim": 32},
        "unet": {"block_out_channels": (32, 64), "attention_head_dim": 8, "layers_per_block": 1},
    },
    # the second toy model (issue: UpFusion that sees): wider and deeper, the official hint (full hidden state)
    "toy-v2": {
        "upsrt": {"image_size": 32, "patch_size": 4, "dim": 128, "heads": 4, "encoder_layers": 5,
                  "decoder_layers": 2, "feature_dim": 64, "ray_frequencies": 8, "hint": "hidden"},
        "unet": {"block_out_channels": (32, 64), "attention_head_dim": 8, "layers_per_block": 1},
        "ray_placement": "proj_in",
    },
    # tests: seconds on CPU
    "tiny": {
        "upsrt": {"image_size": 16, "patch_size": 4, "dim": 32, "heads": 2, "encoder_layers": 1,
                  "decoder_layers": 1, "feature_dim": 8, "ray_frequencies": 2, "focal": 20.0},
        "unet": {"block_out_channels": (16, 32), "attention_head_dim": 8, "layers_per_block": 1},
    },
    # tests of the official placements (full hidden-state hint, rays after proj_in)
    "tiny-v2": {
        "upsrt": {"image_size": 16, "patch_size": 4, "dim": 32, "heads": 2, "encoder_layers": 1,
                  "decoder_layers": 1, "feature_dim": 8, "ray_frequencies": 2, "focal": 20.0, "hint": "hidden"},
        "unet": {"block_out_channels": (16, 32), "attention_head_dim": 8, "layers_per_block": 1},
        "ray_placement": "proj_in",
    },
    # the paper (upfusion3d/upfusion, configs/inference.yaml and control_net/models/cldm_v15_dfslt.yaml): DINOv2
    # ViT-B/14 keys, the official UpSRT (PaperUpSRT's defaults), SD1.5's UNet, VAE and CLIP ViT-L/14 text model
    "paper": {
        "upsrt": {},
        "dinov2": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
                   "patch_size": 14, "image_size": 518, "layerscale_value": 1.0},
        "unet": {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "attention_head_dim": 8,
                 "cross_attention_dim": 768, "norm_num_groups": 32, "sample_size": 32},
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32,
                "sample_size": 256, "scaling_factor": 0.18215},
        "text_encoder": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                         "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                         "hidden_act": "quick_gelu", "projection_dim": 768},
        "preset": "paper",
    },
    # tests: the paper's structure (the same module names, width ratios and index patterns) at tiny widths;
    # 64 px, 8 x 8 latents
    "paper-tiny": {
        "upsrt": {"image_size": 64, "feature_size": 32, "feature_dim": 16, "patches": 4, "dim": 32, "heads": 2,
                  "ff_dim": 48, "encoder_layers": 2, "decoder_layers": 2, "ray_frequencies": 3,
                  "rgb_dims": (16, 8), "focal": 144.0},
        "dinov2": {"hidden_size": 16, "num_hidden_layers": 9, "num_attention_heads": 2, "mlp_ratio": 2,
                   "patch_size": 8, "image_size": 48, "layerscale_value": 1.0},
        "unet": {"block_out_channels": (8, 16, 32, 32), "layers_per_block": 2, "attention_head_dim": 2,
                 "cross_attention_dim": 32, "norm_num_groups": 4, "sample_size": 8},
        "vae": {"block_out_channels": (4, 8, 16, 16), "layers_per_block": 2, "norm_num_groups": 4,
                "sample_size": 64, "scaling_factor": 0.18215},
        "text_encoder": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                         "projection_dim": 32},
        "preset": "paper",
    },
}  # fmt: skip

SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",  # cosine: suits pixel space
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": True,
    "set_alpha_to_one": False,
}
# SD1.5's (= the official LDM's: linear_start 0.00085, linear_end 0.012, eps; DDIM at 1, 21, ..., 981)
PAPER_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# Call defaults per model family. cfg_query_rays: whether the conditional half of a CFG batch gets the scene-token
# blocks' query rays; the official sampler passes none (it batches the cameras as [None, camera] and
# `SLTQueryTransformer._get_ray_condition` tests only the first entry), so the paper preset reproduces that.
PRESETS: dict[str, dict] = {
    "toy": {"guidance_scale": 3.0, "num_inference_steps": 50, "prompt": None, "cfg_query_rays": True},
    "paper": {"guidance_scale": 9.0, "num_inference_steps": 50,
              "prompt": "a high quality image with a white background", "cfg_query_rays": False},
}  # fmt: skip
DEFAULT_PRESET = "toy"


def folder_sampling(folder: str | Path) -> tuple[int, float]:
    """(steps, guidance scale) that a saved pipeline uses when a call leaves them None (its preset's), read from
    its model_index.json without loading it."""
    config = json.loads((Path(folder) / "model_index.json").read_text())
    preset = PRESETS[config.get("preset", DEFAULT_PRESET)]
    return preset["num_inference_steps"], preset["guidance_scale"]


def build_upfusion(name: str = "toy", seed: int = 0, **upsrt_overrides) -> UpFusionPipeline:
    """A randomly initialised UpFusionPipeline from the named configuration (`CONFIGS`)."""
    torch.manual_seed(seed)
    if name not in CONFIGS:
        raise ValueError(f"name must be one of {tuple(CONFIGS)}; got {name!r}")
    config = CONFIGS[name]
    if "vae" in config:
        from pipelines.tokenizers import clip_tokenizer

        return UpFusionPipeline(**paper_components(config, clip_tokenizer(), **upsrt_overrides))
    upsrt = UpSRT(**{**config["upsrt"], **upsrt_overrides})
    size, dim, levels = upsrt.config.image_size, upsrt.config.dim, len(config["unet"]["block_out_channels"])
    unet = UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, cross_attention_dim=dim, norm_num_groups=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        **config["unet"],
    )  # fmt: skip
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(32,), conditioning_channels=upsrt.hint_channels + 6
    )
    placement = config.get("ray_placement", "attn2_query")
    layers = ray_projection_names(unet, "unet", placement) + ray_projection_names(
        controlnet, "controlnet", placement
    )
    dims = [_ray_width(unet if k.startswith("unet/") else controlnet, k) for k in layers]
    return UpFusionPipeline(
        upsrt=upsrt, unet=unet, controlnet=controlnet, ray_queries=SceneRayQueries(layers, dims, placement),
        scheduler=DDIMScheduler(**SCHEDULER),
    )  # fmt: skip


def paper_components(config: dict, tokenizer: CLIPTokenizer, **upsrt_overrides) -> dict:
    """Randomly initialised components of the latent path from a paper-style configuration (`CONFIGS["paper"]`)."""
    upsrt = PaperUpSRT(**{**config["upsrt"], **upsrt_overrides})
    image_encoder = Dinov2Model(Dinov2Config(**config["dinov2"]))
    check_image_encoder(upsrt, image_encoder)
    levels = len(config["unet"]["block_out_channels"])
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        **config["unet"],
    )  # fmt: skip
    if unet.config.cross_attention_dim != upsrt.config.dim:
        raise ValueError(
            f"the ControlNet's cross-attention reads the scene tokens: unet cross_attention_dim "
            f"{unet.config.cross_attention_dim} must equal the UpSRT dim {upsrt.config.dim}"
        )
    controlnet = UpFusionControlNetModel.from_unet(unet, conditioning_channels=upsrt.hint_channels + 6)
    layers = ray_projection_names(controlnet, "controlnet", "proj_in")
    vae_levels = len(config["vae"]["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * vae_levels, up_block_types=("UpDecoderBlock2D",) * vae_levels,
        **config["vae"],
    )  # fmt: skip
    text_config = CLIPTextConfig(
        **config["text_encoder"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    return {
        "upsrt": upsrt, "unet": unet, "controlnet": controlnet,
        "ray_queries": SceneRayQueries(layers, [_ray_width(controlnet, k) for k in layers], "proj_in"),
        "scheduler": DDIMScheduler(**PAPER_SCHEDULER), "vae": vae, "text_encoder": CLIPTextModel(text_config),
        "tokenizer": tokenizer, "image_encoder": image_encoder, "preset": config["preset"],
    }  # fmt: skip


def check_image_encoder(upsrt: PaperUpSRT, dinov2: Dinov2Model) -> None:
    """ValueError unless the DINOv2 model gives the features `upsrt` reads (width, patch grid, the key layer)."""
    c, d = upsrt.config, dinov2.config
    problems = []
    if d.hidden_size != c.feature_dim:
        problems.append(f"hidden_size {d.hidden_size} != UpSRT feature_dim {c.feature_dim}")
    if c.feature_size // d.patch_size != c.patches:
        problems.append(f"{c.feature_size} px / patch {d.patch_size} != {c.patches} patches per side")
    if d.num_hidden_layers <= c.feature_layer:
        problems.append(f"{d.num_hidden_layers} layers; the keys come from layer {c.feature_layer}")
    if problems:
        raise ValueError("image_encoder (DINOv2) does not fit the UpSRT: " + "; ".join(problems))


def _ray_width(model: nn.Module, key: str) -> int:
    """The width the ray term is added at: the attention's query, or the transformer's `proj_in` output."""
    module = model.get_submodule(key.split("/", 1)[1])
    if hasattr(module, "to_q"):
        return module.to_q.out_features
    proj_in = module.proj_in
    return proj_in.out_channels if isinstance(proj_in, nn.Conv2d) else proj_in.out_features


# ----------------------------------------------------------------------------------------------------------
# Input checks (all before any work)
# ----------------------------------------------------------------------------------------------------------


def on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    """An input view as the model takes it: RGB, any transparency composited onto white (the toy renders' and the
    paper's background)."""
    rgba = image.convert("RGBA")
    return PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")


def check_images(images: object) -> list[PIL.Image.Image]:
    """1-6 RGB PIL images of one size, else ValueError naming `images`."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if not isinstance(images, Sequence) or isinstance(images, str):
        raise ValueError(f"images must be a list of 1 to {MAX_VIEWS} PIL images; got {type(images).__name__}")
    UPFUSION_SETTINGS["views"].check(len(images), ValueError, "len(images)")
    for i, image in enumerate(images):
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"images[{i}] must be a PIL image; got {type(image).__name__}")
        if image.mode != "RGB":
            raise ValueError(
                f"images[{i}] has mode {image.mode!r}; only 'RGB' is allowed (use image.convert('RGB'), "
                "compositing RGBA onto a white background first)"
            )
    sizes = sorted({image.size for image in images})
    if len(sizes) > 1:
        raise ValueError(f"images must all have the same size; got sizes {sizes}")
    return list(images)


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def query_poses(query_cameras: object, distance: float) -> torch.Tensor:
    """Query cameras -> (Q, 4, 4) poses relative to the first view, from (azimuth, elevation) pairs or matrices."""
    allowed = "a list of (azimuth, elevation) pairs in degrees, or 4x4 matrices / a (Q, 4, 4) array"
    if isinstance(query_cameras, torch.Tensor | np.ndarray):
        if query_cameras.ndim >= 2 and tuple(query_cameras.shape[-2:]) == (4, 4):
            check_camera_count(math.prod(query_cameras.shape[:-2]))
        poses = check_pose(query_cameras, "query_cameras")
        return poses.reshape(-1, 4, 4)
    if not isinstance(query_cameras, Sequence) or isinstance(query_cameras, str) or not query_cameras:
        raise ValueError(f"query_cameras must be {allowed}; got {query_cameras!r:.80}")
    if len(query_cameras) == 4 and all(isinstance(r, Sequence) and len(r) == 4 for r in query_cameras):
        if all(_is_number(x) for r in query_cameras for x in r):  # one matrix as a nested list
            return check_pose(query_cameras, "query_cameras")[None]
    check_camera_count(len(query_cameras))
    poses = []
    for i, camera in enumerate(query_cameras):
        if isinstance(camera, Sequence) and len(camera) == 2 and all(_is_number(x) for x in camera):
            azimuth, elevation = (
                UPFUSION_SETTINGS[name].check(x, ValueError, f"query_cameras[{i}] {name}")
                for name, x in zip(("azimuth", "elevation"), camera, strict=True)
            )
            poses.append(query_camera(azimuth, elevation, distance))
        elif isinstance(camera, torch.Tensor | np.ndarray) or (
            isinstance(camera, Sequence) and len(camera) == 4
        ):
            poses.append(check_pose(camera, f"query_cameras[{i}]"))
        else:
            raise ValueError(
                f"query_cameras[{i}] has an unknown camera format ({camera!r:.60}); expected {allowed}"
            )
    return torch.stack(poses)


def check_camera_count(count: int) -> None:
    """ValueError naming `query_cameras` unless 1 <= count <= MAX_QUERY_CAMERAS (every view is a diffusion row)."""
    if count == 0:
        raise ValueError(f"query_cameras holds no camera; allowed: 1 to {MAX_QUERY_CAMERAS} per call")
    if count > MAX_QUERY_CAMERAS:
        raise ValueError(
            f"query_cameras holds {count} cameras; allowed: 1 to {MAX_QUERY_CAMERAS} per call (each is a row of "
            "the diffusion batch); split them over several calls"
        )


def check_flags(**flags: object) -> dict[str, bool | None]:
    """The call's flags as bools (`UPFUSION_SETTINGS`): True / False (a numpy bool too), None only where that is
    the setting's default; anything else ("no", 1, None for a flag) is a ValueError naming the parameter."""
    return {name: UPFUSION_SETTINGS[name].check(value, ValueError) for name, value in flags.items()}


def check_sampling(num_inference_steps: object, guidance_scale: object, output_type: object, max_steps: int):
    """ValueError naming the parameter for bad steps (`UPFUSION_SETTINGS`, at most the scheduler's `max_steps`),
    guidance scale or output type."""
    steps = UPFUSION_SETTINGS["num_inference_steps"]
    steps.narrowed(high=min(steps.high, max_steps)).check(num_inference_steps, ValueError)
    UPFUSION_SETTINGS["guidance_scale"].check(guidance_scale, ValueError)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}; got {output_type!r}")


def images_to_tensor(images: list[PIL.Image.Image], size: int) -> torch.Tensor:
    """RGB PIL images -> (N, 3, size, size) float in [0, 1] (resized with antialiasing when needed)."""
    x = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in images]))
    x = x.permute(0, 3, 1, 2)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------


@dataclass
class UpFusionPipelineOutput(BaseOutput):
    """`images`: a list of PIL images, a (Q, S, S, 3) array or a (Q, 3, S, S) tensor in [0, 1]."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class UpFusionPipeline(DiffusionPipeline):
    """Novel views of an object from 1-6 unposed images (UpFusion): UpSRT + a scene-conditioned diffusion model.

    Without `vae`, `text_encoder`, `tokenizer` and `image_encoder` (the toy models) the diffusion runs on pixels and
    the UNet attends to the scene tokens; with them (the paper's configuration) it runs on VAE latents, UpSRT reads
    DINOv2 keys, the UNet reads the prompt and the call follows the official code's conventions (PyTorch3D rays,
    zero scene tokens for the unconditional rows). `preset` names the call defaults (`PRESETS`)."""

    model_cpu_offload_seq = "text_encoder->image_encoder->upsrt->controlnet->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer", "image_encoder"]

    def __init__(
        self,
        upsrt: UpSRT | PaperUpSRT,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel | UpFusionControlNetModel,
        ray_queries: SceneRayQueries,
        scheduler: DDIMScheduler,
        vae: AutoencoderKL | None = None,
        text_encoder: CLIPTextModel | None = None,
        tokenizer: CLIPTokenizer | None = None,
        image_encoder: Dinov2Model | None = None,
        preset: str = DEFAULT_PRESET,
    ):
        super().__init__()
        latent = {
            "vae": vae,
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "image_encoder": image_encoder,
        }
        if any(m is None for m in latent.values()) and any(m is not None for m in latent.values()):
            missing = [name for name, m in latent.items() if m is None]
            raise ValueError(
                f"the latent path needs vae, text_encoder, tokenizer and image_encoder; missing {missing}"
            )
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}; got {preset!r}")
        self.register_modules(
            upsrt=upsrt,
            unet=unet,
            controlnet=controlnet,
            ray_queries=ray_queries,
            scheduler=scheduler,
            **latent,
        )
        self.register_to_config(preset=preset)

    @property
    def latent(self) -> bool:
        """True on the latent path (the paper's configuration), False on the toy models' pixel path."""
        return self.vae is not None

    @property
    def sample_size(self) -> int:
        """Side of the diffusion samples and of the hint: the latent grid, or the image size on the pixel path."""
        size = self.upsrt.config.image_size
        return size // 2 ** (len(self.vae.config.block_out_channels) - 1) if self.latent else size

    def scene_attention(self, call: SceneCall):
        """Context manager: scene-token processors for the call on the ControlNet's attn2 layers, and on the UNet's
        unless it reads a prompt (the latent path)."""
        models = (
            {"controlnet": self.controlnet}
            if self.latent
            else {"unet": self.unet, "controlnet": self.controlnet}
        )
        return scene_attention_installed(
            models, self.ray_queries.mapping(), call, self.ray_queries.config.placement
        )

    def scene_call(
        self,
        poses: torch.Tensor,
        keep: torch.Tensor | None = None,
        enabled: bool = True,
        ray_keep: torch.Tensor | None = None,
    ) -> SceneCall:
        """The SceneCall of query cameras (R, 4, 4) in this model's conventions (toy, or the official ones)."""
        focal, size = self.upsrt.config.focal, self.upsrt.config.image_size
        if not self.latent:
            return SceneCall(poses, focal, size, keep, enabled)
        return SceneCall(
            poses, focal, size, keep, enabled, convention="pytorch3d", distance=self.upsrt.config.distance,
            null_scene="zero_tokens", ray_keep=ray_keep,
        )  # fmt: skip

    def encode_views(self, inputs: torch.Tensor) -> torch.Tensor:
        """Scene tokens (B, T, D) of views (B, N, 3, S, S) in [0, 1]: through UpSRT's own patch encoder, or through
        the DINOv2 keys it reads (the latent path)."""
        if self.image_encoder is None:
            return self.upsrt.encode(inputs)
        config = self.upsrt.config
        keys = dinov2_keys(
            self.image_encoder, inputs.flatten(0, 1), config.feature_layer, config.feature_size
        )
        return self.upsrt.encode(keys.unflatten(0, inputs.shape[:2]))

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """CLIP's last hidden state (1, L, C) of `prompt` padded to the tokenizer's length (FrozenCLIPEmbedder)."""
        ids = self.tokenizer(
            [prompt], padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        return self.text_encoder(ids.to(self._execution_device)).last_hidden_state

    def sampling(self, num_inference_steps: int | None = None, guidance_scale: float | None = None) -> tuple:
        """(steps, guidance scale) of a call: the given ones, the preset's (`PRESETS`) for None."""
        preset = PRESETS[self.config.preset]
        return (
            preset["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
            preset["guidance_scale"] if guidance_scale is None else guidance_scale,
        )

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[PIL.Image.Image],
        query_cameras: object,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        upsrt_only: bool = False,
        scene_attention: bool = True,
        prompt: str | None = None,
        cfg_query_rays: bool | None = None,
        callback_on_step_end: Callable | None = None,
        return_dict: bool = True,
    ):
        """Render `query_cameras` of the object shown in `images`.

        images: 1-6 RGB PIL images of one size (resized to the model's size), the first one the reference view.
        query_cameras: (azimuth, elevation) pairs in degrees relative to the first view, or 4x4 camera-to-world
            matrices in the first view's OpenCV camera frame (a list, or a (Q, 4, 4) array/tensor).
        num_inference_steps, guidance_scale: DDIM steps; classifier-free guidance against the unconditional
            model (no scene tokens, no hint; the null prompt on the latent path); 1 turns it off. None: the
            preset's (toy: 50 steps, CFG 3; paper: 50 steps, CFG 9).
        generator: one generator, or one per query view.
        upsrt_only: return UpSRT's regression render (no diffusion).
        scene_attention: False drops the scene-token cross-attention (the ablation; the hint stays).
        prompt: the UNet's prompt (latent path only); None: the preset's ("a high quality image with a white
            background").
        cfg_query_rays: whether the conditional rows of a CFG batch get the scene-token query rays; None: the
            preset's (the paper preset reproduces the official sampler, which passes none).
        callback_on_step_end: `f(pipe, step, timestep, {"latents": ...}) -> dict` after each step.
        """
        steps, guidance = self.sampling(num_inference_steps, guidance_scale)
        flags = check_flags(
            upsrt_only=upsrt_only, scene_attention=scene_attention, cfg_query_rays=cfg_query_rays,
            return_dict=return_dict,
        )  # fmt: skip
        upsrt_only, scene_attention, cfg_query_rays, return_dict = flags.values()
        views = check_images(images)
        poses = query_poses(query_cameras, self.upsrt.config.distance)
        check_sampling(steps, guidance, output_type, self.scheduler.config.num_train_timesteps)
        if prompt is not None and not self.latent:
            raise ValueError(
                "prompt: this model has no text encoder (a pixel-path toy model); leave prompt None"
            )
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string; got {type(prompt).__name__}")
        queries = poses.shape[0]
        if isinstance(generator, list) and len(generator) != queries:
            raise ValueError(
                f"generator: got a list of {len(generator)}; pass one per query view ({queries})"
            )
        size, device, dtype = self.upsrt.config.image_size, self._execution_device, self.upsrt.dtype

        inputs = images_to_tensor(views, size).to(device, dtype)[None]  # (1, N, 3, S, S)
        poses = poses.to(device, dtype)
        scene = self.encode_views(inputs)  # (1, T, D)
        rgb, features = self.upsrt.render(scene, poses[None], None if upsrt_only else self.sample_size)
        if upsrt_only:
            return self._output(rgb[0], output_type, return_dict)

        hint = diffusion_hint(self.upsrt, features[0], poses)
        with one_call_per_scheduler(self.scheduler, type(self).__name__):
            images = self.denoise(
                scene.expand(queries, -1, -1), hint, poses, steps, guidance, generator, scene_attention,
                callback_on_step_end, prompt, cfg_query_rays,
            )  # fmt: skip
        return self._output(images, output_type, return_dict)

    @torch.no_grad()
    def denoise(
        self,
        scene: torch.Tensor,
        hint: torch.Tensor,
        poses: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None = None,
        scene_attention: bool = True,
        callback_on_step_end: Callable | None = None,
        prompt: str | None = None,
        cfg_query_rays: bool | None = None,
    ) -> torch.Tensor:
        """DDIM sampling of R query views (R, 3, S, S) in [0, 1] from per-row scene tokens (R, T, D), hints and poses.

        Rows may come from different objects (the benchmark batches many); inputs are not checked here. On the
        latent path the samples are VAE latents, decoded at the end."""
        preset = PRESETS[self.config.preset]
        rows, side = poses.shape[0], self.sample_size
        shape = (rows, self.unet.config.in_channels, side, side)
        latents = randn_tensor(shape, generator=generator, device=scene.device, dtype=scene.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=scene.device)
        cfg = guidance_scale > 1.0
        copies = 2 if cfg else 1
        keep = (torch.cat([torch.zeros(rows), torch.ones(rows)]) if cfg else torch.ones(rows)).to(
            scene.device
        )
        cfg_rays = preset["cfg_query_rays"] if cfg_query_rays is None else cfg_query_rays
        ray_keep = None if cfg_rays or not cfg else torch.zeros_like(keep)
        call = self.scene_call(poses.repeat(copies, 1, 1), keep, scene_attention, ray_keep)
        hints = torch.cat([torch.zeros_like(hint), hint]) if cfg else hint
        scenes = scene.repeat(copies, 1, 1)
        texts = None
        if self.latent:
            texts = self._prompt_rows(preset["prompt"] if prompt is None else prompt, rows, cfg)
        with self.scene_attention(call), self.progress_bar(total=len(self.scheduler.timesteps)) as progress:
            for i, t in enumerate(self.scheduler.timesteps):
                x = self.scheduler.scale_model_input(latents.repeat(copies, 1, 1, 1), t)
                prediction = denoiser_output(self.unet, self.controlnet, x, t, scenes, hints, texts)
                if cfg:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(prediction, t, latents).prev_sample
                if callback_on_step_end is not None:
                    latents = callback_on_step_end(self, i, t, {"latents": latents}).get("latents", latents)
                progress.update()
        if self.latent:
            latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (latents / 2 + 0.5).clamp(0, 1)

    def _prompt_rows(self, prompt: str, rows: int, cfg: bool) -> torch.Tensor:
        """The UNet's prompt embeddings per row: [null prompt] * rows + [prompt] * rows under CFG."""
        text = self.encode_prompt(prompt).expand(rows, -1, -1)
        return torch.cat([self.encode_prompt("").expand(rows, -1, -1), text]) if cfg else text

    def _output(self, images: torch.Tensor, output_type: str, return_dict: bool):
        images = images.float().cpu()
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).numpy()
        elif output_type == "pil":
            array = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            images = [PIL.Image.fromarray(a) for a in array]
        self.maybe_free_model_hooks()
        return UpFusionPipelineOutput(images=images) if return_dict else (images,)


def orbit(
    pipe: UpFusionPipeline,
    images: Sequence[PIL.Image.Image],
    frames: int = UPFUSION_SETTINGS["frames"].default,
    elevation: float = UPFUSION_SETTINGS["orbit_elevation"].default,
    gif_path: str | None = None,
    frame_ms: int = UPFUSION_SETTINGS["frame_ms"].default,
    **kwargs,
) -> list[PIL.Image.Image]:
    """A turntable: `frames` views at equal azimuth steps around the object (relative to the first input view).

    Extra keyword arguments go to the pipeline call; with `gif_path` the frames are written as a looping GIF, whole
    or not at all and never through a link (`pipelines.files.write_atomically`)."""
    from pipelines.files import write_atomically

    frames, elevation, frame_ms = (
        UPFUSION_SETTINGS[setting].check(value, ValueError, name)
        for setting, name, value in (
            ("frames", "frames", frames), ("orbit_elevation", "elevation", elevation), ("frame_ms", "frame_ms", frame_ms)
        )
    )  # fmt: skip
    cameras = [(360.0 * k / frames, elevation) for k in range(frames)]
    views = pipe(images=images, query_cameras=cameras, output_type="pil", **kwargs).images
    if gif_path is not None:
        write_atomically(
            Path(gif_path),
            lambda f: views[0].save(
                f, format="GIF", save_all=True, append_images=views[1:], duration=frame_ms, loop=0
            ),
        )
    return views
