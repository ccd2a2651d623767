"""UpFusion at the paper's configuration: DINOv2 layer-8 keys, the official UpSRT, the latent SD1.5 ControlNet path and
the conversion of the official checkpoints, all at tiny widths (`CONFIGS["paper-tiny"]`, the paper's structure).

The official layouts and formulas here are written from the official code (upfusion3d/upfusion), independently of
pipelines/upfusion.py and pipelines/convert_upfusion.py: key names and shapes from the modules' constructors, rays
from PyTorch3D's camera model (X_cam = X_world R + T, NDC +x left / +y up), encodings as `positional_encoding`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

from guidance.cameras import query_camera
from guidance.upfusion import official_plucker_rays
from pipelines.convert_upfusion import (
    ConversionError,
    check_filled,
    convert_upfusion,
    converted_components,
    key_tables,
    load_official,
    map_state_dict,
    upsrt_rows,
)
from pipelines.tokenizers import clip_tokenizer
from pipelines.upfusion import (
    CONFIGS,
    PaperUpSRT,
    UpFusionPipeline,
    build_upfusion,
    denoiser_output,
    diffusion_hint,
    dinov2_keys,
    dinov2_position_embeddings,
)

TINY = CONFIGS["paper-tiny"]

# ----------------------------------------------------------------------------------------------------------
# The official formulas (reference implementations)
# ----------------------------------------------------------------------------------------------------------


def ref_harmonics(x: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """upsrt/renderer/rays.py positional_encoding (without the Plücker step) / id_encoding.positionally_encode_ids."""
    bands = 2.0 ** torch.arange(start, start + n) * np.pi
    return torch.cat([torch.sin(x * f) for f in bands] + [torch.cos(x * f) for f in bands], dim=-1)


def ref_plucker(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """get_plucker_parameterization: (d, o x d), d normalised."""
    d = directions / directions.norm(dim=-1, keepdim=True)
    return torch.cat([d, torch.cross(origins, d, dim=-1)], dim=-1)


def p3d_rays(R: torch.Tensor, T: torch.Tensor, focal: float, xs: torch.Tensor, ys: torch.Tensor):
    """get_directional_raybundle for a PerspectiveCameras(R, T, focal (NDC), principal point 0) at NDC (xs, ys)."""
    camera = torch.stack([xs / focal, ys / focal, torch.ones_like(xs)], dim=-1)  # unprojected at depth 1
    world = (camera - T) @ R.T  # X_cam = X_world R + T
    centre = -T @ R.T
    directions = world - centre
    return centre.expand_as(directions), directions / directions.norm(dim=-1, keepdim=True)


def look_at(centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch3D look_at_view_transform's (R, T) of a camera at `centre` looking at the origin, up = +y."""
    z = -centre / centre.norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], dim=1)  # columns: the camera axes in world coordinates
    return R, -centre @ R


def official_camera(azimuth: float, elevation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, T) in the official W2 frame of the camera that `query_camera(azimuth, elevation, 1)` names.

    Our world (y up, first view at (0, 0, 1) looking at the origin) is W2 turned 180 degrees about y: the first
    view sits at (0, 0, -1) in W2, R = I, T = (0, 0, 1), as scripts/run_distillation.py ITWDataset builds it."""
    az, el = math.radians(azimuth), math.radians(elevation)
    centre = torch.tensor([-math.cos(el) * math.sin(az), math.sin(el), -math.cos(el) * math.cos(az)])
    return look_at(centre)


def grid_ndc(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """get_grid_raybundle_gpu's NDC samples: linspace(1, -1) both ways, meshgrid 'xy', row-major."""
    axis = torch.linspace(1, -1, size)
    xs, ys = torch.meshgrid(axis, axis, indexing="xy")
    return xs.reshape(-1), ys.reshape(-1)


def ref_attention(x, memory, sd, prefix, heads):
    """TransformerEncoderBlock._xformers_mha_wrapper: bias-free q/k/v/out, softmax(q k / sqrt(d)) v per head."""
    q, k, v = (
        F.linear(t, sd[f"{prefix}.to_{n}.weight"]) for t, n in ((x, "q"), (memory, "k"), (memory, "v"))
    )
    split = [t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v)]
    weights = (split[0] @ split[1].transpose(-1, -2) / math.sqrt(split[0].shape[-1])).softmax(-1)
    out = (weights @ split[2]).transpose(1, 2).flatten(2)
    return F.linear(out, sd[f"{prefix}.to_out.weight"])


def ref_block(x, memory, sd, prefix, heads):
    """TransformerEncoderBlock / TransformerDecoderBlock.forward (pre-norm, GELU MLP); memory None: self-attention."""
    d = x.shape[-1]
    h = F.layer_norm(x, (d,), sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"])
    x = x + ref_attention(h, h if memory is None else memory, sd, prefix, heads)
    h = F.layer_norm(x, (d,), sd[f"{prefix}.norm2.weight"], sd[f"{prefix}.norm2.bias"])
    h = F.linear(F.gelu(F.linear(h, sd[f"{prefix}.linear1.weight"], sd[f"{prefix}.linear1.bias"])),
                 sd[f"{prefix}.linear2.weight"], sd[f"{prefix}.linear2.bias"])  # fmt: skip
    return x + h


def ref_upsrt(sd, config, dino, R, T, size):
    """UpSRT.get_query_features (pre-RGB features) and UpSRT.infer (colours) with the official state dict."""
    c = config
    n, start, patches = c.ray_frequencies, c.start_frequency, c.patches
    focal = 2 * c.focal / c.image_size  # NDC
    edges = torch.linspace(1, -1, patches + 1)[:-1]  # get_patch_raybundle: top-left corners
    h, v = np.meshgrid(edges.numpy(), edges.numpy())
    o, d = p3d_rays(
        torch.eye(3), torch.zeros(3), focal, torch.tensor(h.reshape(-1)), torch.tensor(v.reshape(-1))
    )
    views = dino.shape[1]
    ray_code = ref_harmonics(ref_plucker(o, d), n, start).expand(views, -1, -1)
    ids = torch.cat([torch.full((1, 1), i / patches**2) for i in range(1, patches**2 + 1)])
    patch_code = ref_harmonics(ids, n, start).expand(views, -1, -1)
    cameras = torch.tensor([1 / 3 + 0.05] + [2 / 3 + 0.05] * (views - 1))[:, None, None].expand(
        -1, patches**2, 1
    )
    features = torch.cat([dino[0], ray_code, patch_code, ref_harmonics(cameras, n, start)], dim=-1)
    x = F.linear(features, sd["linear_scene.weight"], sd["linear_scene.bias"]).reshape(1, -1, c.dim)
    for i in range(c.encoder_layers):
        x = ref_block(x, None, sd, f"scene_encoder.transformer_encoder.layers.{i}", c.heads)
    o, d = p3d_rays(R, T, focal, *grid_ndc(size))
    q = F.linear(ref_harmonics(ref_plucker(o, d), n, start), sd["linear_query_pixel_rays.weight"],
                 sd["linear_query_pixel_rays.bias"])[None]  # fmt: skip
    for i in range(c.decoder_layers):
        q = ref_block(q, x, sd, f"ray_decoder.transformer_decoder.layers.{i}", c.heads)
    rgb = q
    for i in (0, 2):
        rgb = F.relu(
            F.linear(rgb, sd[f"ray_decoder.rgb_mlp.{i}.weight"], sd[f"ray_decoder.rgb_mlp.{i}.bias"])
        )
    rgb = torch.sigmoid(F.linear(rgb, sd["ray_decoder.rgb_mlp.4.weight"], sd["ray_decoder.rgb_mlp.4.bias"]))
    return rgb[0], q[0]  # (size * size, 3), (size * size, dim), row-major


# ----------------------------------------------------------------------------------------------------------
# Official checkpoint layouts (key names and shapes from the official constructors), random values
# ----------------------------------------------------------------------------------------------------------


class Layout(dict):
    """{key: shape} written the way the official modules name their parameters."""

    def conv(self, name, out, inp, k, bias=True):
        self[f"{name}.weight"] = (out, inp, k, k)
        if bias:
            self[f"{name}.bias"] = (out,)

    def linear(self, name, out, inp, bias=True):
        self[f"{name}.weight"] = (out, inp)
        if bias:
            self[f"{name}.bias"] = (out,)

    def norm(self, name, channels):
        self[f"{name}.weight"] = self[f"{name}.bias"] = (channels,)


def official_upsrt_layout(c) -> Layout:
    """upsrt/model/model.py UpSRT (attn_type "xformers", dim_feedforward c.ff_dim)."""
    n, d = c.ray_frequencies, c.dim
    lay = Layout()
    lay.linear("linear_scene", d, c.feature_dim + 12 * n + 2 * n + 2 * n)
    lay.linear("linear_query_pixel_rays", d, 12 * n)
    for part, layers in (("scene_encoder.transformer_encoder", c.encoder_layers),
                         ("ray_decoder.transformer_decoder", c.decoder_layers)):  # fmt: skip
        for i in range(layers):
            p = f"{part}.layers.{i}"
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                lay.linear(f"{p}.{proj}", d, d, bias=False)
            lay.linear(f"{p}.linear1", c.ff_dim, d)
            lay.linear(f"{p}.linear2", d, c.ff_dim)
            lay.norm(f"{p}.norm1", d)
            lay.norm(f"{p}.norm2", d)
    widths = (d, *c.rgb_dims, 3)
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        lay.linear(f"ray_decoder.rgb_mlp.{2 * i}", b, a)
    return lay


def official_unet_layout(lay: Layout, prefix: str, mc, mult, n, context, controlnet=False, hint=0):
    """openaimodel.UNetModel / cldm_dfslt.ControlNetSLT (attention at the first len(mult) - 1 levels)."""
    emb = 4 * mc

    def res(p, i, o):
        (
            lay.norm(f"{p}.in_layers.0", i),
            lay.conv(f"{p}.in_layers.2", o, i, 3),
            lay.linear(f"{p}.emb_layers.1", o, emb),
        )
        lay.norm(f"{p}.out_layers.0", o), lay.conv(f"{p}.out_layers.3", o, o, 3)
        if i != o:
            lay.conv(f"{p}.skip_connection", o, i, 1)

    def transformer(p, c, rays):
        lay.norm(f"{p}.norm", c), lay.conv(f"{p}.proj_in", c, c + rays, 1), lay.conv(f"{p}.proj_out", c, c, 1)
        b = f"{p}.transformer_blocks.0"
        for attn, kv in (("attn1", c), ("attn2", context)):
            lay.linear(f"{b}.{attn}.to_q", c, c, bias=False), lay.linear(f"{b}.{attn}.to_out.0", c, c)
            (
                lay.linear(f"{b}.{attn}.to_k", c, kv, bias=False),
                lay.linear(f"{b}.{attn}.to_v", c, kv, bias=False),
            )
        lay.linear(f"{b}.ff.net.0.proj", 8 * c, c), lay.linear(f"{b}.ff.net.2", c, 4 * c)  # GEGLU
        for k in (1, 2, 3):
            lay.norm(f"{b}.norm{k}", c)

    rays = 6 if controlnet else 0  # SLTQueryTransformer: in_channels + 6
    lay.linear(f"{prefix}.time_embed.0", emb, mc), lay.linear(f"{prefix}.time_embed.2", emb, emb)
    lay.conv(f"{prefix}.input_blocks.0.0", mc, 4, 3)
    chans, ch, i = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(n):
            res(f"{prefix}.input_blocks.{i}.0", ch, m * mc)
            ch = m * mc
            if level < len(mult) - 1:
                transformer(f"{prefix}.input_blocks.{i}.1", ch, rays)
            chans.append(ch)
            i += 1
        if level != len(mult) - 1:
            lay.conv(f"{prefix}.input_blocks.{i}.0.op", ch, ch, 3)
            chans.append(ch)
            i += 1
    res(f"{prefix}.middle_block.0", ch, ch), transformer(f"{prefix}.middle_block.1", ch, rays)
    res(f"{prefix}.middle_block.2", ch, ch)
    if controlnet:
        for k, c in enumerate(chans):
            lay.conv(f"{prefix}.zero_convs.{k}.0", c, c, 1)
        (
            lay.conv(f"{prefix}.input_hint_block.0", mc, hint, 3),
            lay.conv(f"{prefix}.middle_block_out.0", ch, ch, 1),
        )
        return
    i = 0
    for level in reversed(range(len(mult))):
        for r in range(n + 1):
            res(f"{prefix}.output_blocks.{i}.0", ch + chans.pop(), mult[level] * mc)
            ch, j = mult[level] * mc, 1
            if level < len(mult) - 1:
                transformer(f"{prefix}.output_blocks.{i}.1", ch, 0)
                j = 2
            if level and r == n:
                lay.conv(f"{prefix}.output_blocks.{i}.{j}.conv", ch, ch, 3)
            i += 1
    lay.norm(f"{prefix}.out.0", ch), lay.conv(f"{prefix}.out.2", 4, mc, 3)


def official_vae_layout(lay: Layout, prefix: str, ch: int, mult, n: int, z: int = 4):
    """ldm autoencoder.AutoencoderKL (Encoder / Decoder, no attention at any resolution but the middle)."""

    def block(p, i, o):
        lay.norm(f"{p}.norm1", i), lay.conv(f"{p}.conv1", o, i, 3), lay.norm(f"{p}.norm2", o)
        lay.conv(f"{p}.conv2", o, o, 3)
        if i != o:
            lay.conv(f"{p}.nin_shortcut", o, i, 1)

    def middle(p, c):
        block(f"{p}.mid.block_1", c, c), block(f"{p}.mid.block_2", c, c), lay.norm(f"{p}.mid.attn_1.norm", c)
        for q in ("q", "k", "v", "proj_out"):
            lay.conv(f"{p}.mid.attn_1.{q}", c, c, 1)

    lay.conv(f"{prefix}.encoder.conv_in", ch, 3, 3)
    c = ch
    for level, m in enumerate(mult):
        for r in range(n):
            block(f"{prefix}.encoder.down.{level}.block.{r}", c, ch * m)
            c = ch * m
        if level != len(mult) - 1:
            lay.conv(f"{prefix}.encoder.down.{level}.downsample.conv", c, c, 3)
    middle(f"{prefix}.encoder", c)
    lay.norm(f"{prefix}.encoder.norm_out", c), lay.conv(f"{prefix}.encoder.conv_out", 2 * z, c, 3)
    lay.conv(f"{prefix}.quant_conv", 2 * z, 2 * z, 1), lay.conv(f"{prefix}.post_quant_conv", z, z, 1)
    lay.conv(f"{prefix}.decoder.conv_in", c, z, 3)
    middle(f"{prefix}.decoder", c)
    for level in reversed(range(len(mult))):
        for r in range(n + 1):
            block(f"{prefix}.decoder.up.{level}.block.{r}", c, ch * mult[level])
            c = ch * mult[level]
        if level != 0:
            lay.conv(f"{prefix}.decoder.up.{level}.upsample.conv", c, c, 3)
    lay.norm(f"{prefix}.decoder.norm_out", c), lay.conv(f"{prefix}.decoder.conv_out", 3, c, 3)


def official_upfusion2d_layout(config: dict) -> Layout:
    """control_net/cldm/cldm_dfslt.py ControlLDM's state dict at `config`'s sizes (transformers 4.19 CLIP names)."""
    unet, vae, upsrt = config["unet"], config["vae"], config["upsrt"]
    mc = unet["block_out_channels"][0]
    mult = [c // mc for c in unet["block_out_channels"]]
    lay = Layout()
    context = unet["cross_attention_dim"]
    official_unet_layout(lay, "model.diffusion_model", mc, mult, unet["layers_per_block"], context)
    official_unet_layout(lay, "control_model", mc, mult, unet["layers_per_block"], upsrt["dim"], True,
                         upsrt["dim"] + 6)  # fmt: skip
    ch = vae["block_out_channels"][0]
    official_vae_layout(lay, "first_stage_model", ch, [c // ch for c in vae["block_out_channels"]],
                        vae["layers_per_block"])  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(**config["text_encoder"], bos_token_id=0, eos_token_id=1))
    for key, value in text.state_dict().items():
        lay[f"cond_stage_model.transformer.text_model.{key}"] = tuple(value.shape)
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance", "logvar"):
        lay[name] = (1000,)
    return lay


def random_state(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in the layout's shapes (norm weights near 1), and the LDM schedule buffers."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=gen) * 0.2 for k, shape in layout.items()}
    for k in state:
        if "norm" in k and k.endswith(".weight") and state[k].ndim == 1:
            state[k] = 1 + state[k] * 0.5
    if "betas" in state:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0)
        state.update(betas=betas.float(), alphas_cumprod=alphas.float(),
                     alphas_cumprod_prev=torch.cat([torch.ones(1), alphas[:-1].float()]),
                     posterior_variance=betas.float(), logvar=torch.zeros(1000))  # fmt: skip
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return state


def tiny_upsrt_state(seed: int = 0) -> tuple[PaperUpSRT, dict[str, torch.Tensor]]:
    """A PaperUpSRT at paper-tiny sizes and a random official-layout state dict for it."""
    model = PaperUpSRT(**TINY["upsrt"])
    return model, random_state(official_upsrt_layout(model.config), seed)


def load_official_upsrt(model: PaperUpSRT, state: dict[str, torch.Tensor]) -> PaperUpSRT:
    """`state` mapped through the converter's UpSRT table and loaded strictly."""
    rows = upsrt_rows(model.config)
    targets = {f"upsrt.{k}": v for k, v in model.state_dict().items()}
    tensors = map_state_dict(state, rows, targets, "upsrt.pt")
    check_filled(tensors, targets, rows, "upsrt.pt")
    model.load_state_dict({k.removeprefix("upsrt."): v for k, v in tensors.items()}, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# DINOv2 keys
# ----------------------------------------------------------------------------------------------------------


def test_dinov2_keys_equal_the_layer8_key_projection_of_the_normed_hidden_state():
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=10, num_attention_heads=2, mlp_ratio=2, patch_size=8,
                          image_size=32, layerscale_value=1.0)  # fmt: skip
    model = Dinov2Model(config).eval()
    images = torch.rand(3, 3, 40, 40)
    x = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[
        :, None, None
    ]
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states[8]  # the input of layer 8
        layer = model.encoder.layer[8]
        normed = F.layer_norm(hidden, (16,), layer.norm1.weight, layer.norm1.bias, config.layer_norm_eps)
        reference = F.linear(normed, layer.attention.k_proj.weight, layer.attention.k_proj.bias)[:, 1:]
        ours = dinov2_keys(model, images, 8, 32)
    assert ours.shape == (3, 16, 16)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    other = F.linear(
        model(pixel_values=x, output_hidden_states=True).hidden_states[7], layer.attention.k_proj.weight
    )
    assert (ours - other[:, 1:]).abs().max() > 1e-2  # the layer index matters


def test_position_embeddings_are_interpolated_as_the_torch_hub_dinov2():
    table = torch.randn(1, 1 + 37 * 37, 4)  # ViT-B/14 at 518 px: 37 x 37 positions
    ours = dinov2_position_embeddings(table, 16)  # 224 px
    grid = table[:, 1:].reshape(1, 37, 37, 4).permute(0, 3, 1, 2)
    hub = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", antialias=False)
    torch.testing.assert_close(ours[:, 1:], hub.permute(0, 2, 3, 1).reshape(1, 256, 4))
    torch.testing.assert_close(ours[:, :1], table[:, :1])
    sized = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)  # transformers' resize
    assert (ours[:, 1:] - sized.permute(0, 2, 3, 1).reshape(1, 256, 4)).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# The official rays and UpSRT
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("azimuth, elevation", [(0, 0), (180, 0), (90, 0), (60, 20), (-135, -30)])
def test_official_rays_equal_pytorch3d_cameras_in_the_official_frame(azimuth, elevation):
    R, T = official_camera(azimuth, elevation)
    if (azimuth, elevation) == (0, 0):  # the first view, as ITWDataset places it
        torch.testing.assert_close(R, torch.eye(3))
        torch.testing.assert_close(T, torch.tensor([0.0, 0.0, 1.0]))
    size, focal_px = 8, 4.5 * 4  # NDC focal 4.5
    o, d = p3d_rays(R, T, 4.5, *grid_ndc(size))
    reference = ref_plucker(o, d).reshape(size, size, 6).permute(2, 0, 1)
    ours = official_plucker_rays(query_camera(azimuth, elevation, 1.0), focal_px, size, 1.0)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_the_latent_path_uses_the_official_rays_for_the_hint_and_the_scene_token_blocks():
    pipe = build_upfusion("paper-tiny")
    pose = query_camera(60, 20, 1.0)
    R, T = official_camera(60, 20)
    for side in (8, 4):  # the latent grid (hint, first blocks) and a coarser block's grid
        o, d = p3d_rays(R, T, 4.5, *grid_ndc(side))
        reference = ref_plucker(o, d)  # (side * side, 6), row-major
        torch.testing.assert_close(pipe.scene_call(pose[None]).rays(side * side, torch.float32)[0], reference,
                                   atol=1e-5, rtol=0)  # fmt: skip
    hint = diffusion_hint(pipe.upsrt, torch.zeros(1, 32, 8, 8), pose[None])
    o, d = p3d_rays(R, T, 4.5, *grid_ndc(8))
    torch.testing.assert_close(hint[0, -6:].flatten(1).T, ref_plucker(o, d), atol=1e-5, rtol=0)


def test_converted_upsrt_equals_the_official_forward_pass():
    model, state = tiny_upsrt_state()
    model = load_official_upsrt(model, state)
    dino = torch.randn(1, 3, 16, model.config.feature_dim)
    R, T = official_camera(60, 20)
    ref_rgb, ref_features = ref_upsrt(state, model.config, dino, R, T, 8)
    with torch.no_grad():
        rgb, features = model.render(model.encode(dino), query_camera(60, 20, 1.0)[None, None], 8)
    torch.testing.assert_close(features[0, 0].flatten(1).T, ref_features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rgb[0, 0].flatten(1).T, ref_rgb, atol=1e-5, rtol=1e-5)


def test_upsrt_keys_unknown_misshapen_or_missing_are_refused_by_name():
    model, state = tiny_upsrt_state()
    unknown = {**state, "ray_decoder.rgb_mlp.6.weight": torch.zeros(3, 3)}
    with pytest.raises(ConversionError, match=r"unknown key 'ray_decoder\.rgb_mlp\.6\.weight'"):
        load_official_upsrt(model, unknown)
    misshapen = {**state, "linear_scene.weight": torch.zeros(32, 7)}
    with pytest.raises(ConversionError, match=r"'linear_scene\.weight' has shape \(32, 7\)"):
        load_official_upsrt(model, misshapen)
    missing = {
        k: v for k, v in state.items() if k != "scene_encoder.transformer_encoder.layers.1.linear2.bias"
    }
    with pytest.raises(
        ConversionError, match=r"missing key 'scene_encoder\.transformer_encoder\.layers\.1\.linear2\.bias'"
    ):
        load_official_upsrt(model, missing)


# ----------------------------------------------------------------------------------------------------------
# The paper configuration's structure
# ----------------------------------------------------------------------------------------------------------


def test_the_tiny_configuration_has_the_paper_module_names():
    with torch.device("meta"):
        paper = build_upfusion("paper")
    tiny = build_upfusion("paper-tiny")
    for name in ("unet", "controlnet", "vae", "ray_queries"):
        assert list(getattr(paper, name).state_dict()) == list(getattr(tiny, name).state_dict()), name

    def depth_free(keys) -> set[str]:
        return {re.sub(r"^(encoder|decoder)\.\d+\.", r"\1.N.", k) for k in keys}

    assert depth_free(paper.upsrt.state_dict()) == depth_free(
        tiny.upsrt.state_dict()
    )  # 8 / 4 layers vs 2 / 2
    assert (paper.upsrt.config.encoder_layers, paper.upsrt.config.decoder_layers) == (8, 4)
    assert paper.upsrt.config.dim == 768 and paper.unet.config.block_out_channels == (320, 640, 1280, 1280)
    assert paper.controlnet.controlnet_cond_embedding.weight.shape == (320, 774, 3, 3)
    assert paper.sample_size == 32 and len(paper.ray_queries.config.layers) == 7


# ----------------------------------------------------------------------------------------------------------
# Conversion end to end
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_files(tmp_path_factory) -> dict[str, Path]:
    """Official-layout upsrt.pt / upfusion2d.pt (plain tensors), a DINOv2 folder and an SD1.5 tokenizer folder."""
    root = tmp_path_factory.mktemp("official")
    _, upsrt = tiny_upsrt_state(1)
    torch.save({"model_state_dict": upsrt, "epoch": 3}, root / "upsrt.pt")
    torch.save(
        {"model_state_dict": random_state(official_upfusion2d_layout(TINY), 2)}, root / "upfusion2d.pt"
    )
    torch.manual_seed(3)
    Dinov2Model(Dinov2Config(**TINY["dinov2"])).save_pretrained(root / "dinov2")
    clip_tokenizer().save_pretrained(root / "sd15" / "tokenizer")
    return {"upsrt": root / "upsrt.pt", "upfusion2d": root / "upfusion2d.pt", "dinov2": root / "dinov2",
            "sd15": root / "sd15"}  # fmt: skip


def test_official_layout_converts_loads_and_renders_a_view(official_files, tmp_path):
    out = convert_upfusion(
        **{k: str(v) for k, v in official_files.items()}, out=tmp_path / "out", config="paper-tiny"
    )
    weights = [
        p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".safetensors")
    ]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert (out / "README.md").is_file()
    pipe = UpFusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    official = torch.load(official_files["upfusion2d"], weights_only=True)["model_state_dict"]
    torch.testing.assert_close(pipe.controlnet.controlnet_cond_embedding.weight,
                               official["control_model.input_hint_block.0.weight"])  # fmt: skip
    slt = official["control_model.input_blocks.4.1.proj_in.weight"]  # level 1, second resnet's transformer
    torch.testing.assert_close(pipe.controlnet.down_blocks[1].attentions[0].proj_in.weight, slt[:, :-6])
    index = pipe.ray_queries.config.layers.index("controlnet/down_blocks.1.attentions.0")
    torch.testing.assert_close(pipe.ray_queries.projections[index].weight, slt[:, -6:, 0, 0])
    torch.testing.assert_close(pipe.vae.decoder.mid_block.attentions[0].to_q.weight,
                               official["first_stage_model.decoder.mid.attn_1.q.weight"][:, :, 0, 0])  # fmt: skip
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    view = pipe(images=images, query_cameras=[(90, 10)], num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert view.shape == (1, 3, 64, 64) and torch.isfinite(view).all()


def test_unet_and_vae_tables_agree_with_diffusers_ldm_converters(official_files):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    state = load_official(official_files["upfusion2d"])
    upsrt = load_official(official_files["upsrt"])
    dinov2 = Dinov2Model.from_pretrained(official_files["dinov2"])
    components = converted_components(upsrt, state, dinov2, clip_tokenizer(), "paper-tiny")
    for name, convert in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
        module = components[name]
        reference = convert(state, dict(module.config))
        ours = module.state_dict()
        assert set(reference) == set(ours), name
        for key, value in reference.items():
            torch.testing.assert_close(ours[key].reshape(value.shape), value, msg=key)


@pytest.mark.parametrize(
    "change, match",
    [
        ("missing", r"missing key 'model\.diffusion_model\.output_blocks\.5\.2\.conv\.weight'"),
        ("extra", r"unknown key 'control_model\.input_blocks\.1\.1\.proj_extra\.weight'"),
        (
            "misshapen",
            r"'first_stage_model\.encoder\.down\.1\.block\.0\.nin_shortcut\.weight' has shape \(8, 5, 1, 1\)",
        ),
        ("schedule", r"'betas' differs from SD1\.5's schedule"),
    ],
)
def test_upfusion2d_key_problems_are_refused_by_name(official_files, change, match):
    state = load_official(official_files["upfusion2d"])
    if change == "missing":
        del state["model.diffusion_model.output_blocks.5.2.conv.weight"]
    elif change == "extra":
        state["control_model.input_blocks.1.1.proj_extra.weight"] = torch.zeros(1)
    elif change == "misshapen":
        state["first_stage_model.encoder.down.1.block.0.nin_shortcut.weight"] = torch.zeros(8, 5, 1, 1)
    else:
        state["betas"] = state["betas"] * 2
    upsrt = load_official(official_files["upsrt"])
    dinov2 = Dinov2Model.from_pretrained(official_files["dinov2"])
    with pytest.raises(ConversionError, match=match):
        converted_components(upsrt, state, dinov2, clip_tokenizer(), "paper-tiny")


def test_the_cli_converts_and_a_refused_conversion_leaves_no_folder(official_files, tmp_path, capsys):
    from tools.cli import main

    files = [str(official_files["upsrt"]), str(official_files["upfusion2d"])]
    options = ["--dinov2", str(official_files["dinov2"]), "--sd15", str(official_files["sd15"])]
    out = tmp_path / "converted"
    assert main(["convert-upfusion", *files, *options, "--out", str(out), "--config", "paper-tiny"]) == 0
    pipe = UpFusionPipeline.from_pretrained(out)
    assert pipe.config.preset == "paper" and (out / "README.md").is_file()
    capsys.readouterr()
    state = load_official(official_files["upsrt"])
    state.pop("linear_scene.weight")
    torch.save({"model_state_dict": state}, tmp_path / "broken.pt")
    broken = tmp_path / "broken-out"
    code = main(["convert-upfusion", str(tmp_path / "broken.pt"), files[1], *options, "--out", str(broken),
                 "--config", "paper-tiny"])  # fmt: skip
    assert code == 2 and "linear_scene.weight" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt", "converted"]  # nothing half-written
    assert main(["convert-upfusion", *files, *options, "--out", str(out), "--config", "paper-tiny"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_the_key_tables_in_the_docs_are_the_codes():
    docs = (Path(__file__).parents[1] / "docs" / "upfusion.md").read_text()
    block = docs.split("<!-- key tables: begin -->\n")[1].split("<!-- key tables: end -->")[0]
    assert block == key_tables("paper")


class NotATensor:
    """An object only code can rebuild (torch.load(weights_only=True) must refuse it)."""


def test_a_checkpoint_that_needs_code_to_unpickle_is_refused(tmp_path):
    path = tmp_path / "upsrt.pt"
    torch.save({"model_state_dict": {"linear_scene.weight": torch.zeros(2)}, "config": NotATensor()}, path)
    with pytest.raises(ConversionError, match=r"refused: unpickling it needs code to run"):
        load_official(path)


# ----------------------------------------------------------------------------------------------------------
# Classifier-free guidance as the official
# ----------------------------------------------------------------------------------------------------------


def test_cfg_is_the_official_null_prompt_zero_hint_zero_tokens_no_rays():
    pipe = build_upfusion("paper-tiny", seed=1)
    pipe.set_progress_bar_config(disable=True)
    with (
        torch.no_grad()
    ):  # the zero-initialised ControlNet parts and ray terms must act for the test to see them
        for p in [*pipe.controlnet.parameters(), *pipe.ray_queries.parameters()]:
            if (p == 0).all():
                p.normal_(0, 0.2)
    gen = torch.Generator().manual_seed(0)
    scene, hint = torch.randn(1, 48, 32, generator=gen), torch.randn(1, 38, 8, 8, generator=gen)
    pose = query_camera(70, 15, 1.0)[None]
    scheduler = pipe.scheduler

    def manual(rays: bool) -> torch.Tensor:
        """One DDIM step (50-step schedule, first timestep) written out: uncond = null prompt, zero hint, zero
        scene tokens, no rays; cond = the prompt, hint, tokens and (if `rays`) the query rays."""
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        scheduler.set_timesteps(50)
        t = scheduler.timesteps[0]
        saved = [p.clone() for p in pipe.ray_queries.parameters()]
        with torch.no_grad():
            null, text = (
                pipe.encode_prompt(""),
                pipe.encode_prompt("a high quality image with a white background"),
            )
            for p in pipe.ray_queries.parameters():
                p.zero_()
            with pipe.scene_attention(pipe.scene_call(pose)):
                uncond = denoiser_output(pipe.unet, pipe.controlnet, latents, t, torch.zeros_like(scene),
                                         torch.zeros_like(hint), null)  # fmt: skip
            if rays:
                for p, s in zip(pipe.ray_queries.parameters(), saved):
                    p.copy_(s)
            with pipe.scene_attention(pipe.scene_call(pose)):
                cond = denoiser_output(pipe.unet, pipe.controlnet, latents, t, scene, hint, text)
            for p, s in zip(pipe.ray_queries.parameters(), saved):
                p.copy_(s)
            eps = uncond + 9.0 * (cond - uncond)
            return scheduler.step(eps, t, latents).prev_sample

    class Stop(Exception):
        """Ends the sampling loop after its first step."""

    def pipeline(**kwargs) -> torch.Tensor:
        latents = {}

        def stop(pipe_, i, t, state):
            latents["first"] = state["latents"]
            raise Stop

        with pytest.raises(Stop):
            pipe.denoise(scene, hint, pose, 50, 9.0, torch.Generator().manual_seed(5), callback_on_step_end=stop,
                         **kwargs)  # fmt: skip
        return latents["first"]

    torch.testing.assert_close(pipeline(), manual(rays=False), atol=1e-5, rtol=1e-5)  # the official sampler
    torch.testing.assert_close(pipeline(cfg_query_rays=True), manual(rays=True), atol=1e-5, rtol=1e-5)
    assert (manual(rays=True) - manual(rays=False)).abs().max() > 1e-4  # the rays act


def test_paper_preset_defaults_and_prompt_checks():
    pipe = build_upfusion("paper-tiny")
    assert pipe.config.preset == "paper"
    seen = {}

    def spy(scene, hint, poses, steps, guidance, *args):
        seen.update(steps=steps, guidance=guidance, prompt=args[3])
        return torch.zeros(poses.shape[0], 3, 64, 64)

    pipe.denoise = spy
    image = PIL.Image.new("RGB", (64, 64), "white")
    pipe(images=[image], query_cameras=[(30, 0)], output_type="pt")
    assert seen == {"steps": 50, "guidance": 9.0, "prompt": None}
    toy = build_upfusion("tiny")
    with pytest.raises(ValueError, match="prompt: this model has no text encoder"):
        toy(images=[image], query_cameras=[(30, 0)], prompt="a cat")
