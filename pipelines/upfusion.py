"""UpFusion (Kani et al., "UpFusion: Novel View Diffusion from Unposed Sparse View Observations", ECCV 2024):
novel views of an object from 1-6 images whose poses are unknown.

Components: `upsrt` (UpSRT, the pose-free scene transformer: set-latent scene tokens and a ray decoder),
`unet` (the denoiser; its cross-attention attends to the scene tokens instead of text), `controlnet` (a
zero-initialised ControlNet fed with UpSRT's query-view feature map and the query Plücker rays),
`ray_queries` (the learned query-ray term of the scene-token attention) and a DDIM `scheduler`.

    pipe = UpFusionPipeline.from_pretrained("assets/toy-upfusion")
    views = pipe(images=[img0, img1], query_cameras=[(90, 0), (180, 20)], num_inference_steps=25).images

Query cameras are relative to the first input view: (azimuth, elevation) in degrees on an orbit around the
object at the training distance, or 4x4 camera-to-world matrices in the first view's camera frame (OpenCV).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDIMScheduler, DiffusionPipeline, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from guidance.cameras import check_pose, plucker_rays, query_camera
from guidance.upfusion import PLACEMENTS, SceneCall, ray_projection_names, scene_attention_installed

MAX_VIEWS = 6
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

    def query_rays(self, query_c2w: torch.Tensor) -> torch.Tensor:
        """Plücker rays (..., 6, S, S) of query cameras (..., 4, 4) relative to the first view."""
        return plucker_rays(query_c2w, self.config.focal, self.config.image_size).to(self.dtype)

    def render(self, scene: torch.Tensor, query_c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Render query views (B, Q, 4, 4): colours (B, Q, 3, S, S) and feature maps (B, Q, hint_channels, S, S)."""
        size = self.config.image_size
        rays = self.query_rays(query_c2w)  # (B, Q, 6, S, S)
        batch, queries = rays.shape[:2]
        flat = rays.permute(0, 1, 3, 4, 2).reshape(batch, -1, 6)
        rgb, features = self.decode_rays(scene, flat)

        def to_maps(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, queries, size, size, -1).permute(0, 1, 4, 2, 3)

        return to_maps(rgb), to_maps(features)

    def forward(self, images: torch.Tensor, query_c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the views (B, N, 3, S, S) and render the query cameras (B, Q, 4, 4): (colours, features)."""
        return self.render(self.encode(images), query_c2w)


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
) -> torch.Tensor:
    """The UNet's prediction with the ControlNet residuals; scene-token processors must be installed by the caller."""
    down, mid = controlnet(
        sample, timestep, encoder_hidden_states=scene, controlnet_cond=hint, return_dict=False
    )
    return unet(
        sample, timestep, encoder_hidden_states=scene, down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample  # fmt: skip


def diffusion_hint(upsrt: UpSRT, features: torch.Tensor, query_c2w: torch.Tensor) -> torch.Tensor:
    """The ControlNet hint (Q, hint_channels + 6, S, S): UpSRT's query-view features and the query Plücker rays."""
    return torch.cat([features, upsrt.query_rays(query_c2w)], dim=1)


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


def build_upfusion(name: str = "toy", seed: int = 0, **upsrt_overrides) -> UpFusionPipeline:
    """A randomly initialised UpFusionPipeline from the named configuration (`CONFIGS`)."""
    torch.manual_seed(seed)
    if name not in CONFIGS:
        raise ValueError(f"name must be one of {tuple(CONFIGS)}; got {name!r}")
    config = CONFIGS[name]
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


def check_images(images: object) -> list[PIL.Image.Image]:
    """1-6 RGB PIL images of one size, else ValueError naming `images`."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if not isinstance(images, Sequence) or isinstance(images, str):
        raise ValueError(f"images must be a list of 1 to {MAX_VIEWS} PIL images; got {type(images).__name__}")
    if not 1 <= len(images) <= MAX_VIEWS:
        raise ValueError(f"images must hold 1 to {MAX_VIEWS} views; got {len(images)}")
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


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def query_poses(query_cameras: object, distance: float) -> torch.Tensor:
    """Query cameras -> (Q, 4, 4) poses relative to the first view, from (azimuth, elevation) pairs or matrices."""
    allowed = "a list of (azimuth, elevation) pairs in degrees, or 4x4 matrices / a (Q, 4, 4) array"
    if isinstance(query_cameras, torch.Tensor | np.ndarray):
        poses = check_pose(query_cameras, "query_cameras")
        return poses.reshape(-1, 4, 4)
    if not isinstance(query_cameras, Sequence) or isinstance(query_cameras, str) or not query_cameras:
        raise ValueError(f"query_cameras must be {allowed}; got {query_cameras!r:.80}")
    if len(query_cameras) == 4 and all(isinstance(r, Sequence) and len(r) == 4 for r in query_cameras):
        if all(_is_real(x) for r in query_cameras for x in r):  # one matrix as a nested list
            return check_pose(query_cameras, "query_cameras")[None]
    poses = []
    for i, camera in enumerate(query_cameras):
        if isinstance(camera, Sequence) and len(camera) == 2 and all(_is_real(x) for x in camera):
            azimuth, elevation = (float(x) for x in camera)
            if not -90.0 <= elevation <= 90.0:
                raise ValueError(
                    f"query_cameras[{i}]: elevation must lie in [-90, 90] degrees; got {elevation}"
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


def check_sampling(num_inference_steps: object, guidance_scale: object, output_type: object, max_steps: int):
    """ValueError naming the parameter for bad steps, guidance scale or output type."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise ValueError(f"num_inference_steps must be an integer >= 1; got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= max_steps:
        raise ValueError(f"num_inference_steps must lie in [1, {max_steps}]; got {num_inference_steps}")
    if not _is_real(guidance_scale) or not 1.0 <= float(guidance_scale) <= 50.0:
        raise ValueError(
            f"guidance_scale must be a finite number in [1, 50] (1 turns guidance off); got {guidance_scale!r}"
        )
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
    """Novel views of an object from 1-6 unposed images (UpFusion): UpSRT + a scene-conditioned diffusion model."""

    model_cpu_offload_seq = "upsrt->controlnet->unet"

    def __init__(
        self,
        upsrt: UpSRT,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        ray_queries: SceneRayQueries,
        scheduler: DDIMScheduler,
    ):
        super().__init__()
        self.register_modules(
            upsrt=upsrt, unet=unet, controlnet=controlnet, ray_queries=ray_queries, scheduler=scheduler
        )

    def scene_attention(self, call: SceneCall):
        """Context manager: scene-token processors on the UNet's and ControlNet's attn2 layers for the call."""
        models = {"unet": self.unet, "controlnet": self.controlnet}
        return scene_attention_installed(
            models, self.ray_queries.mapping(), call, self.ray_queries.config.placement
        )

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[PIL.Image.Image],
        query_cameras: object,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        upsrt_only: bool = False,
        scene_attention: bool = True,
        callback_on_step_end: Callable | None = None,
        return_dict: bool = True,
    ):
        """Render `query_cameras` of the object shown in `images`.

        images: 1-6 RGB PIL images of one size (resized to the model's size), the first one the reference view.
        query_cameras: (azimuth, elevation) pairs in degrees relative to the first view, or 4x4 camera-to-world
            matrices in the first view's OpenCV camera frame (a list, or a (Q, 4, 4) array/tensor).
        num_inference_steps, guidance_scale: DDIM steps; classifier-free guidance against the unconditional
            model (no scene tokens, no hint); 1 turns it off.
        generator: one generator, or one per query view.
        upsrt_only: return UpSRT's regression render (no diffusion).
        scene_attention: False drops the scene-token cross-attention (the ablation; the hint stays).
        callback_on_step_end: `f(pipe, step, timestep, {"latents": ...}) -> dict` after each step.
        """
        views = check_images(images)
        poses = query_poses(query_cameras, self.upsrt.config.distance)
        check_sampling(
            num_inference_steps, guidance_scale, output_type, self.scheduler.config.num_train_timesteps
        )
        queries = poses.shape[0]
        if isinstance(generator, list) and len(generator) != queries:
            raise ValueError(
                f"generator: got a list of {len(generator)}; pass one per query view ({queries})"
            )
        size, device, dtype = self.upsrt.config.image_size, self._execution_device, self.upsrt.dtype

        inputs = images_to_tensor(views, size).to(device, dtype)[None]  # (1, N, 3, S, S)
        poses = poses.to(device, dtype)
        scene = self.upsrt.encode(inputs)  # (1, T, D)
        rgb, features = self.upsrt.render(scene, poses[None])
        if upsrt_only:
            return self._output(rgb[0], output_type, return_dict)

        hint = diffusion_hint(self.upsrt, features[0], poses)
        images = self.denoise(
            scene.expand(queries, -1, -1), hint, poses, num_inference_steps, guidance_scale, generator,
            scene_attention, callback_on_step_end,
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
    ) -> torch.Tensor:
        """DDIM sampling of R query views (R, 3, S, S) in [0, 1] from per-row scene tokens (R, T, D), hints and poses.

        Rows may come from different objects (the benchmark batches many); inputs are not checked here."""
        rows, size = poses.shape[0], self.upsrt.config.image_size
        shape = (rows, 3, size, size)
        latents = randn_tensor(shape, generator=generator, device=scene.device, dtype=scene.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=scene.device)
        cfg = guidance_scale > 1.0
        copies = 2 if cfg else 1
        keep = torch.cat([torch.zeros(rows), torch.ones(rows)]) if cfg else torch.ones(rows)
        call = SceneCall(
            poses.repeat(copies, 1, 1),
            self.upsrt.config.focal,
            size,
            keep.to(scene.device),
            enabled=scene_attention,
        )
        hints = torch.cat([torch.zeros_like(hint), hint]) if cfg else hint
        scenes = scene.repeat(copies, 1, 1)
        with self.scene_attention(call), self.progress_bar(total=len(self.scheduler.timesteps)) as progress:
            for i, t in enumerate(self.scheduler.timesteps):
                x = self.scheduler.scale_model_input(latents.repeat(copies, 1, 1, 1), t)
                prediction = denoiser_output(self.unet, self.controlnet, x, t, scenes, hints)
                if cfg:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(prediction, t, latents).prev_sample
                if callback_on_step_end is not None:
                    latents = callback_on_step_end(self, i, t, {"latents": latents}).get("latents", latents)
                progress.update()
        return (latents / 2 + 0.5).clamp(0, 1)

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
    frames: int = 24,
    elevation: float = 15.0,
    gif_path: str | None = None,
    frame_ms: int = 80,
    **kwargs,
) -> list[PIL.Image.Image]:
    """A turntable: `frames` views at equal azimuth steps around the object (relative to the first input view).

    Extra keyword arguments go to the pipeline call; with `gif_path` the frames are written as a looping GIF."""
    if isinstance(frames, bool) or not isinstance(frames, numbers.Integral) or not 1 <= frames <= 360:
        raise ValueError(f"frames must be an integer in [1, 360]; got {frames!r}")
    cameras = [(360.0 * k / frames, float(elevation)) for k in range(frames)]
    views = pipe(images=images, query_cameras=cameras, output_type="pil", **kwargs).images
    if gif_path is not None:
        views[0].save(gif_path, save_all=True, append_images=views[1:], duration=frame_ms, loop=0)
    return views
