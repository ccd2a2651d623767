"""The UpFusion benchmark's references and gate, the official placements (ray term, hint), and trainer resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import upfusion_toy as bench
from guidance.cameras import query_camera
from guidance.upfusion import SceneCall
from pipelines.upfusion import UpFusionPipeline, build_upfusion, denoiser_output, diffusion_hint

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "assets" / "toy-upfusion"

# ----------------------------------------------------------------------------------------------------------
# Reference rows and scores on known cases
# ----------------------------------------------------------------------------------------------------------


def known_object() -> dict:
    """Three constant-colour input views at (azimuth, elevation) (0, 0), (90, 60), (180, 0) and two queries at
    (60, 50) and (175, 5): the elevations make the forward axis the only one that picks inputs 1 and 2."""
    inputs = torch.stack([torch.full((3, 8, 8), v) for v in (0.2, 0.4, 0.9)])
    cams = torch.stack([query_camera(a, e, 4.0) for a, e in ((0, 0), (90, 60), (180, 0), (60, 50), (175, 5))])
    relative = torch.linalg.inv(cams[0]) @ cams
    return {"inputs": inputs, "truth": torch.full((2, 3, 8, 8), 0.4), "input_c2w": relative[:3],
            "query_c2w": relative[3:]}  # fmt: skip


def test_reference_rows_on_a_known_case():
    obj = known_object()
    mean_image = torch.full((3, 8, 8), 0.7)
    rows = bench.reference_outputs(obj, 3, mean_image)
    assert torch.equal(rows["white"], torch.ones(2, 3, 8, 8))
    assert torch.equal(rows["mean_training_image"], mean_image.expand(2, -1, -1, -1))
    torch.testing.assert_close(rows["mean_of_inputs"], torch.full((2, 3, 8, 8), 0.5), rtol=0, atol=1e-6)
    # the query at 85 degrees is nearest to the input at 90, the one at 175 to the input at 180
    assert torch.equal(rows["nearest_input"], obj["inputs"][[1, 2]])
    # with one input, the nearest input is that input
    assert torch.equal(bench.reference_outputs(obj, 1, mean_image)["nearest_input"], obj["inputs"][[0, 0]])


def test_scores_on_known_images():
    truth = torch.ones(2, 3, 8, 8)
    truth[:, :, 2:6, 2:6] = 0.0  # a 4x4 black square on white
    half = truth.clone()
    half[:, :, 2:6, 4:6] = 1.0  # half the square missing
    s = bench.scores(half, truth)
    assert s["iou"] == pytest.approx([0.5, 0.5])
    assert s["psnr"] == pytest.approx([10 * math.log10(64 / 8)] * 2, abs=1e-9)  # 8 of 64 pixels wrong by 1
    assert bench.scores(truth, truth)["ssim"] == pytest.approx([1.0, 1.0])
    assert bench.silhouette_iou(torch.ones(1, 3, 8, 8), torch.ones(1, 3, 8, 8)) == pytest.approx([1.0])


def test_summary_pairs_rows_per_object():
    per_object = {
        row: {n: {k: [base + n * slope + i for i in range(5)] for k in bench.METRICS} for n in (1, 6)}
        for row, base, slope in (
            ("mean_of_inputs", 10.0, 0.0),
            ("nearest_input", 10.0, 0.5),
            ("upsrt", 11.0, 0.2),
        )
    }
    table, paired = bench.summarize(per_object, [1, 6])
    assert paired["upsrt - mean_of_inputs/N=1"]["psnr"]["mean"] == pytest.approx(1.2)
    assert paired["upsrt - mean_of_inputs/N=1"]["psnr"]["low"] == pytest.approx(1.2)  # no spread: exact
    assert paired["upsrt: N=6 - N=1"]["psnr"]["mean"] == pytest.approx(1.0)
    assert table["upsrt/N=6"]["psnr"]["mean"] == pytest.approx(11.0 + 1.2 + 2.0)


def test_gate_fails_on_the_first_toy_model(tmp_path):
    from benchmarks.upfusion_gate import main

    if not (ASSET / "model_index.json").exists():
        pytest.skip("assets/toy-upfusion is not here")
    code = main(
        ["--model", str(ASSET), "--objects", "12", "--queries", "2", "--out", str(tmp_path / "g.json")]
    )
    assert code == 1
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["gate"]["passed"] is False and result["gate"]["failures"]


def test_gate_verdict_passes_only_when_every_condition_holds():
    from benchmarks.upfusion_gate import verdict

    good = {"mean": 1.5, "low": 0.2, "high": 2.0}
    paired = {f"upsrt - mean_of_inputs/N={n}": {"psnr": good} for n in bench.VIEW_COUNTS}
    paired["upsrt: N=6 - N=1"] = {"psnr": {"mean": 1.2, "low": 0.5, "high": 1.9}}
    assert verdict(paired, 1.0) == []
    paired["upsrt: N=6 - N=1"] = {"psnr": {"mean": 0.9, "low": 0.5, "high": 1.9}}
    assert len(verdict(paired, 1.0)) == 1
    paired["upsrt - mean_of_inputs/N=3"] = {"psnr": {"mean": 0.5, "low": -0.1, "high": 1.0}}
    assert len(verdict(paired, 1.0)) == 2


# ----------------------------------------------------------------------------------------------------------
# The official placements
# ----------------------------------------------------------------------------------------------------------


def attn1_inputs(pipe: UpFusionPipeline, poses: torch.Tensor) -> torch.Tensor:
    """The hidden states the first conditioned transformer block's self-attention reads, for query poses."""
    seen, me = [], threading.get_ident()

    def capture(module, args, kwargs):
        if threading.get_ident() == me:  # other threads' calls run through the same module
            seen.append(args[0] if args else kwargs["hidden_states"])

    block = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    handle = block.attn1.register_forward_pre_hook(capture, with_kwargs=True)
    size = pipe.upsrt.config.image_size
    x = torch.randn(poses.shape[0], 3, size, size, generator=torch.Generator().manual_seed(0))
    scene = torch.randn(poses.shape[0], 8, pipe.upsrt.config.dim, generator=torch.Generator().manual_seed(1))
    hint = torch.zeros(poses.shape[0], pipe.upsrt.hint_channels + 6, size, size)
    try:
        with torch.no_grad(), pipe.scene_attention(SceneCall(poses, pipe.upsrt.config.focal, size)):
            denoiser_output(pipe.unet, pipe.controlnet, x, torch.tensor([500] * poses.shape[0]), scene, hint)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("placement", ["proj_in", "attn2_query"])
def test_the_ray_term_reaches_the_token_stream_only_after_proj_in(placement):
    config = "tiny-v2" if placement == "proj_in" else "tiny"
    pipe = build_upfusion(config, seed=0)
    assert pipe.ray_queries.config.placement == placement
    poses = torch.stack([query_camera(30.0, 10.0, 3.0), query_camera(150.0, -5.0, 3.0)])
    same = torch.stack([poses[0], poses[0]])
    zero, zero_same = attn1_inputs(pipe, poses), attn1_inputs(pipe, same)
    torch.testing.assert_close(zero, zero_same, rtol=0, atol=0)  # zero-initialised: the pose changes nothing
    with torch.no_grad():
        for projection in pipe.ray_queries.projections:
            projection.weight.normal_(generator=torch.Generator().manual_seed(2))
    moved, moved_same = attn1_inputs(pipe, poses), attn1_inputs(pipe, same)
    if placement == "proj_in":  # self-attention sees the query rays: row 1 depends on its pose
        assert not torch.allclose(moved[1], moved_same[1])
        torch.testing.assert_close(moved[0], moved_same[0], rtol=0, atol=0)  # same pose, same row
    else:  # the first toy model: only the cross-attention query sees them
        torch.testing.assert_close(moved, zero, rtol=0, atol=0)


def test_the_hint_is_the_full_decoder_hidden_state():
    pipe = build_upfusion("tiny-v2", seed=0)
    assert pipe.upsrt.hint_channels == pipe.upsrt.config.dim
    scene = pipe.upsrt.encode(torch.rand(1, 2, 3, 16, 16))
    poses = query_camera(40.0, 0.0, 3.0)[None, None]
    rgb, features = pipe.upsrt.render(scene, poses)
    assert features.shape == (1, 1, pipe.upsrt.config.dim, 16, 16)
    hint = diffusion_hint(pipe.upsrt, features[:, 0], poses[:, 0])
    assert hint.shape[1] == pipe.controlnet.config.conditioning_channels == pipe.upsrt.config.dim + 6
    # the colour is a function of the hint features alone (the official RGB MLP reads the hidden state)
    again = torch.sigmoid(pipe.upsrt.rgb_head(features[:, 0].permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    torch.testing.assert_close(again, rgb[:, 0])


def test_scene_calls_from_threads_give_the_sequential_results():
    pipe = build_upfusion("tiny-v2", seed=0)
    with torch.no_grad():
        for projection in pipe.ray_queries.projections:
            projection.weight.normal_(generator=torch.Generator().manual_seed(3))
    poses = [torch.stack([query_camera(a, 5.0, 3.0)]) for a in (10.0, 100.0, 200.0, 300.0)]
    alone = [attn1_inputs(pipe, p) for p in poses]
    results, barrier = [None] * 4, threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = attn1_inputs(pipe, poses[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, results):
        assert torch.equal(a, b)
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in pipe.unet.attn_processors.values())
    assert not pipe.unet.down_blocks[1].attentions[0].proj_in._forward_hooks


# ----------------------------------------------------------------------------------------------------------
# Trainer: a killed run resumes to the weights of an uninterrupted one
# ----------------------------------------------------------------------------------------------------------

TRAIN = [sys.executable, "-m", "toyworld.train.upfusion", "--stage", "upsrt", "--config", "tiny-v2",
         "--objects", "4", "--views", "8", "--batch", "2", "--rays", "32", "--input-queries", "0.3",
         "--warmup", "5", "--schedule-steps", "200", "--max-steps", "120", "--minutes", "30",
         "--save-every", "0"]  # fmt: skip


def _state(out: Path) -> dict:
    for folder in ("checkpoint", "checkpoint.old"):  # a kill between save_checkpoint's renames leaves .old
        try:
            return json.loads((out / folder / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return {}


def test_a_killed_trainer_resumes_to_identical_weights(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([*TRAIN, "--out", str(straight)], check=True, env=env, cwd=ROOT, capture_output=True)
    process = subprocess.Popen([*TRAIN, "--out", str(killed)], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while _state(killed).get("step", 0) < 10 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = _state(killed)
    assert 0 < at_kill.get("step", 0) < 120 and at_kill.get("stage") == "upsrt", (
        "the run was not killed mid-stage"
    )
    subprocess.run(
        [*TRAIN, "--out", str(killed), "--resume"], check=True, env=env, cwd=ROOT, capture_output=True
    )
    resumed = _state(killed)
    assert (
        len(resumed["commands"]) == 2 and resumed["step"] == 120
    )  # it continued the killed run's checkpoint
    a = load_file(straight / "checkpoint" / "upsrt.safetensors")
    b = load_file(killed / "checkpoint" / "upsrt.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_four_threads_on_shared_components_give_the_sequential_images():
    from diffusers import DDIMScheduler

    base = build_upfusion("tiny-v2", seed=0)
    base.set_progress_bar_config(disable=True)
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    views = [_pil(x) for x in images]
    cameras = [[(a, 5.0)] for a in (20.0, 110.0, 200.0, 290.0)]

    def call(pipe, i):
        return pipe(images=views, query_cameras=cameras[i], num_inference_steps=2, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(i), output_type="pt").images  # fmt: skip

    alone = [call(base, i) for i in range(4)]
    pipes = [UpFusionPipeline.from_pipe(base, scheduler=DDIMScheduler.from_config(base.scheduler.config))
             for _ in range(4)]  # fmt: skip
    results, barrier = [None] * 4, threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = call(pipes[i], i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, results):
        assert torch.equal(a, b)
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in base.controlnet.attn_processors.values())


def _pil(x: torch.Tensor):
    import PIL.Image

    return PIL.Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


def test_shipped_example_objects_are_held_out_and_match_their_renders(tmp_path):
    from toyworld.upfusion_examples import write_examples
    from toyworld.views import split_of

    shipped = ROOT / "assets" / "upfusion-examples"
    index = json.loads((shipped / "examples.json").read_text())
    assert index["examples"] and all(split_of(e["seed"]) == "heldout" for e in index["examples"])
    first = index["examples"][0]
    again = write_examples(tmp_path, 1, offset=first["seed"] - 1_000_000)[0]
    assert again["seed"] == first["seed"]
    for a, b in zip(first["views"], again["views"]):
        assert (shipped / a).read_bytes() == (tmp_path / b).read_bytes()
