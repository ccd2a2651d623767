"""UpFusion: scene-token attention, UpSRT, the pipeline's API and checks, the trainer's steps (tiny random configs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from guidance.cameras import query_camera
from guidance.upfusion import SceneCall, scene_attention
from pipelines.upfusion import UpFusionPipeline, UpSRT, build_upfusion, orbit

ASSET = Path(__file__).resolve().parents[1] / "assets" / "toy-upfusion"


@pytest.fixture(scope="module")
def pipe() -> UpFusionPipeline:
    pipe = build_upfusion("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def views(n: int = 2, size: int = 16, seed: int = 0) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def run(pipe, **kw) -> torch.Tensor:
    args = {"images": views(), "query_cameras": [(40, 10)], "num_inference_steps": 2, "output_type": "pt"}
    args.update(kw)
    return pipe(**args, generator=torch.Generator().manual_seed(0)).images


def processor_classes(pipe) -> set[str]:
    return {type(p).__name__ for m in (pipe.unet, pipe.controlnet) for p in m.attn_processors.values()}


# ----------------------------------------------------------------------------------------------------------
# Math and processors
# ----------------------------------------------------------------------------------------------------------


def test_scene_attention_matches_softmax_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    out = scene_attention(q, k, v, heads=2)
    split = [t.unflatten(-1, (2, 4)).transpose(1, 2) for t in (q, k, v)]
    weights = torch.softmax(split[0] @ split[1].transpose(-1, -2) / 2.0, dim=-1)
    expected = (weights @ split[2]).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_scene_call_rays_identity_camera_centre_ray_looks_forward():
    call = SceneCall(torch.eye(4)[None], focal=20.0, size=16)
    rays = call.rays(4 * 4, torch.float32)  # a 4x4 grid: pixel centres symmetric about the optical axis
    assert rays.shape == (1, 16, 6)
    torch.testing.assert_close(rays[0, :, 3:], torch.zeros(16, 3))  # camera at the origin: zero moment
    assert (rays[0, :, 2] > 0.9).all()  # looking along +z
    with pytest.raises(ValueError, match="square"):
        call.rays(12, torch.float32)


def test_processors_restored_after_call_and_after_an_exception(pipe):
    before = processor_classes(pipe)
    assert before == {"AttnProcessor2_0"}
    seen = []

    def boom(p, step, t, kwargs):
        seen.append(processor_classes(p))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(pipe, callback_on_step_end=boom)
    assert "SceneTokenAttnProcessor" in seen[0]
    assert processor_classes(pipe) == before
    run(pipe)
    assert processor_classes(pipe) == before


def test_scene_attention_false_is_the_ablation(pipe):
    with_scene, without = run(pipe), run(pipe, scene_attention=False)
    assert with_scene.shape == without.shape
    assert not torch.allclose(with_scene, without)


# ----------------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------------


def test_save_pretrained_from_pretrained_round_trip(pipe, tmp_path):
    expected = run(pipe, query_cameras=[(0, 0), (120, 20)])
    pipe.save_pretrained(tmp_path)
    loaded = UpFusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.upsrt) is UpSRT
    torch.testing.assert_close(run(loaded, query_cameras=[(0, 0), (120, 20)]), expected)


def test_upsrt_only_and_diffusion_agree_in_shape_and_range(pipe):
    for upsrt_only in (True, False):
        out = run(pipe, query_cameras=[(0, 0), (90, 0), (180, 30)], upsrt_only=upsrt_only)
        assert out.shape == (3, 3, 16, 16)
        assert 0.0 <= out.min() and out.max() <= 1.0
    pil = run(pipe, upsrt_only=True, output_type="pil")
    array = run(pipe, output_type="np")
    assert pil[0].size == (16, 16) and pil[0].mode == "RGB" and array.shape == (1, 16, 16, 3)


def test_angles_and_matrices_name_the_same_camera(pipe):
    distance = pipe.upsrt.config.distance
    pose = query_camera(40, 10, distance)
    by_angle = run(pipe, query_cameras=[(40, 10)], upsrt_only=True)
    by_matrix = run(pipe, query_cameras=pose[None], upsrt_only=True)
    by_list = run(pipe, query_cameras=[pose.tolist()], upsrt_only=True)
    by_nested = run(pipe, query_cameras=pose.tolist(), upsrt_only=True)
    assert not torch.allclose(by_angle, run(pipe, query_cameras=[(100, 10)], upsrt_only=True))
    torch.testing.assert_close(by_angle, by_nested)
    torch.testing.assert_close(by_angle, by_matrix)
    torch.testing.assert_close(by_angle, by_list)


def test_orbit_writes_a_gif(pipe, tmp_path):
    path = tmp_path / "orbit.gif"
    frames = orbit(pipe, views(1), frames=3, gif_path=str(path), num_inference_steps=1, upsrt_only=True)
    assert len(frames) == 3
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": []}, r"len\(images\)=0 is out of range; allowed: an integer in \[1, 6\]"),
        ({"images": views(7)}, r"len\(images\)=7 is out of range; allowed: an integer in \[1, 6\]"),
        ({"images": [*views(1), *views(1, size=20)]}, r"images must all have the same size"),
        ({"images": [views(1)[0].convert("L")]}, r"images\[0\] has mode 'L'; only 'RGB'"),
        ({"images": [views(1)[0], views(1)[0].convert("RGBA")]}, r"images\[1\] has mode 'RGBA'"),
        ({"images": [np.zeros((16, 16, 3))]}, r"images\[0\] must be a PIL image"),
        ({"query_cameras": "front"}, r"query_cameras must be"),
        ({"query_cameras": [(1, 2, 3)]}, r"query_cameras\[0\] has an unknown camera format"),
        (
            {"query_cameras": [(0, 100)]},
            r"query_cameras\[0\] elevation=100 is out of range; allowed: a finite number in \[-90, 90\]",
        ),
        ({"query_cameras": torch.diag(torch.tensor([2.0, 1, 1, 1]))[None]}, r"query_cameras .*orthonormal"),
        ({"query_cameras": [torch.diag(torch.tensor([-1.0, 1, 1, 1]))]}, r"query_cameras\[0\] .*determinant"),
        (
            {"num_inference_steps": 0},
            r"num_inference_steps=0 is out of range; allowed: an integer in \[1, 1000\]",
        ),
        ({"num_inference_steps": 2.5}, r"num_inference_steps=2.5 must be an integer in \[1, 1000\]"),
        ({"num_inference_steps": True}, r"num_inference_steps=True must be an integer"),
        ({"guidance_scale": float("nan")}, r"guidance_scale=nan must be a finite number in \[1, 50\]"),
        (
            {"guidance_scale": 0.5},
            r"guidance_scale=0.5 is out of range; allowed: a finite number in \[1, 50\]",
        ),
        ({"output_type": "latent"}, r"output_type must be one of"),
    ],
)
def test_bad_inputs_raise_before_any_work(pipe, monkeypatch, kwargs, match):
    def no_work(*args, **kw):
        raise AssertionError("the model ran before the inputs were checked")

    monkeypatch.setattr(pipe.upsrt, "encode", no_work)
    with pytest.raises(ValueError, match=match):
        run(pipe, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# UpSRT encoders and training steps
# ----------------------------------------------------------------------------------------------------------


def test_dinov2_encoder_path(tmp_path):
    config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "patch_size": 4, "image_size": 16}  # fmt: skip
    model = UpSRT(image_size=16, dim=32, heads=2, encoder_layers=1, decoder_layers=1, feature_dim=8,
                  ray_frequencies=2, dinov2_config=config)  # fmt: skip
    images = torch.rand(2, 3, 3, 16, 16)
    scene = model.encode(images)
    assert scene.shape == (2, 3 * 16, 32)
    rgb, features = model.render(scene, torch.eye(4).expand(2, 1, 4, 4))
    assert rgb.shape == (2, 1, 3, 16, 16) and features.shape == (2, 1, 8, 16, 16)
    model.save_pretrained(tmp_path)
    loaded = UpSRT.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.encode(images), scene)


def fixed_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    cameras = torch.stack(
        [torch.stack([query_camera(a, 10, 3.0), query_camera(a + 60, 0, 3.0)]) for a in (30, 200)]
    )
    return {
        "inputs": torch.rand(2, 2, 3, 16, 16, generator=gen),
        "targets": torch.rand(2, 2, 3, 16, 16, generator=gen),
        "query_c2w": cameras,
    }


@pytest.mark.parametrize("stage", ["upsrt", "diffusion"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(stage):
    from toyworld.train.upfusion import diffusion_loss, trainable, upsrt_loss

    pipe = build_upfusion("tiny", seed=0)
    batch = fixed_batch()

    def loss() -> torch.Tensor:
        gen = torch.Generator().manual_seed(2)
        return (
            upsrt_loss(pipe, batch, 64, gen)
            if stage == "upsrt"
            else diffusion_loss(pipe, batch, gen, 0.0, 0.0)
        )

    params = [p for m in trainable(pipe, stage).values() for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after < before


def test_optimizer_state_round_trips_through_safetensors_tensors():
    from toyworld.train.upfusion import load_optimizer, optimizer_tensors

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    tensors, groups = optimizer_tensors(optimizer)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_optimizer(fresh, tensors, groups)
    torch.testing.assert_close(
        fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


@pytest.mark.skipif(not (ASSET / "model_index.json").exists(), reason="assets/toy-upfusion not trained yet")
def test_shipped_toy_model_renders_a_view():
    pipe = UpFusionPipeline.from_pretrained(ASSET)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.upsrt.config.image_size
    out = run(pipe, images=views(2, size), num_inference_steps=2, guidance_scale=2.0)
    assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()
