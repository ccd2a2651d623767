"""UpFusion on held-out toy objects: PSNR, SSIM and sharpness of novel views from N = 1, 2, 3, 6 unposed inputs.

    python -m benchmarks.upfusion_toy --model assets/toy-upfusion --objects 100 --queries 4 --steps 5 --guidance 2.5

For every held-out object: `6 + queries` views are ray-cast (toyworld.views, the benchmark's own seed); the
first N of the 6 input views are the inputs, the query views are rendered relative to the first input view and
scored against the ray-cast ground truth. Rows: the diffusion model, UpSRT alone (its regression render), and
the diffusion model without scene-token attention (the ablation). Every row uses the same objects, views and
noise seeds (one generator per object and query view), so differences are paired per object; intervals are
95% percentile bootstrap intervals over objects. Sharpness: gradient energy of the output over that of the
ground truth (1 = as sharp as the truth; a blurry regression is < 1). Writes results/upfusion_toy.json and,
with --samples, results/upfusion_samples.png (inputs | UpSRT | diffusion | ground truth for 4 objects).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from skimage.metrics import structural_similarity

from guidance.cameras import relative_cameras
from pipelines.upfusion import UpFusionPipeline, diffusion_hint
from toyworld.views import sample_views, split_seeds

VIEW_COUNTS = (1, 2, 3, 6)
METHODS = ("diffusion", "upsrt", "no_scene_attention")


def object_views(seed: int, queries: int, size: int, view_seed: int) -> dict[str, torch.Tensor]:
    """Six input views and `queries` query views of one held-out object; query poses relative to input 0."""
    data = sample_views(seed, 6 + queries, size, seed=view_seed)
    return {
        "inputs": data["images"][:6],
        "truth": data["images"][6:],
        "query_c2w": relative_cameras(data["c2w"][6:], data["c2w"][0]),
    }


def gradient_energy(images: np.ndarray) -> np.ndarray:
    """Mean squared finite difference of the grey image, per image (N, S, S, 3) -> (N,)."""
    grey = images.mean(-1)
    dx, dy = np.diff(grey, axis=-1), np.diff(grey, axis=-2)
    return (dx**2).mean((-1, -2)) + (dy**2).mean((-1, -2))


def scores(output: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image PSNR, SSIM and sharpness ratio of outputs vs ground truth, both (Q, 3, S, S) in [0, 1]."""
    out, gt = (x.permute(0, 2, 3, 1).double().numpy() for x in (output, truth))
    mse = ((out - gt) ** 2).mean((1, 2, 3))
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    ssim = np.array([structural_similarity(a, b, channel_axis=-1, data_range=1.0) for a, b in zip(out, gt)])
    sharpness = gradient_energy(out) / np.maximum(gradient_energy(gt), 1e-12)
    return {"psnr": psnr, "ssim": ssim, "sharpness": sharpness}


def bootstrap(values: np.ndarray, rng: np.random.Generator, draws: int = 4000) -> list[float]:
    """Mean and 95% percentile bootstrap interval over objects."""
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    return [float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


@torch.no_grad()
def run_chunk(pipe, chunk: list[dict], n: int, args) -> dict[str, torch.Tensor]:
    """Outputs (objects * queries, 3, S, S) of every method for one chunk of objects with N inputs each."""
    q = args.queries
    inputs = torch.stack([o["inputs"][:n] for o in chunk])  # (B, N, 3, S, S)
    poses = torch.stack([o["query_c2w"] for o in chunk])  # (B, Q, 4, 4)
    scene = pipe.upsrt.encode(inputs)
    rgb, features = pipe.upsrt.render(scene, poses)
    rows = poses.flatten(0, 1)
    hint = diffusion_hint(pipe.upsrt, features.flatten(0, 1), rows)
    scene_rows = scene.repeat_interleave(q, dim=0)
    outputs = {"upsrt": rgb.flatten(0, 1)}
    for method, scene_attention in (("diffusion", True), ("no_scene_attention", False)):
        generators = [torch.Generator().manual_seed(o["seed"] * 100 + k) for o in chunk for k in range(q)]
        start = time.perf_counter()
        outputs[method] = pipe.denoise(
            scene_rows, hint, rows, args.steps, args.guidance, generators, scene_attention=scene_attention
        )
        outputs[f"{method}_seconds"] = time.perf_counter() - start
    return outputs


def sample_sheet(pipe, objects: list[dict], args, path: Path) -> None:
    """inputs (N=3) | UpSRT | diffusion | ground truth, one object per row, the first query view, 4x upscaled."""
    rows = []
    for obj in objects[:4]:
        out = run_chunk(pipe, [obj], 3, args)
        tiles = [*obj["inputs"][:3], out["upsrt"][0], out["diffusion"][0], obj["truth"][0]]
        rows.append(torch.cat([torch.nn.functional.pad(t, (1, 1, 1, 1), value=0.5) for t in tiles], dim=-1))
    sheet = torch.cat(rows, dim=-2).permute(1, 2, 0).numpy()
    image = PIL.Image.fromarray((sheet * 255).round().astype(np.uint8))
    image.resize((image.width * 4, image.height * 4), PIL.Image.NEAREST).save(path)


def measure(pipe, objects: list[dict], counts: list[int], args) -> tuple[dict, dict]:
    """Per-object scores {method: {N: {metric: [...]}}} (means over the query views) and denoising seconds."""
    per_object = {m: {n: {k: [] for k in ("psnr", "ssim", "sharpness")} for n in counts} for m in METHODS}
    seconds = {m: 0.0 for m in ("diffusion", "no_scene_attention")}
    for n in counts:
        for i in range(0, len(objects), args.chunk):
            chunk = objects[i : i + args.chunk]
            outputs = run_chunk(pipe, chunk, n, args)
            truth = torch.cat([o["truth"] for o in chunk])
            for method in METHODS:
                for key, values in scores(outputs[method], truth).items():
                    per_object[method][n][key].extend(
                        values.reshape(len(chunk), args.queries).mean(1).tolist()
                    )
            for method in seconds:
                seconds[method] += outputs[f"{method}_seconds"]
            print(f"N={n}: {i + len(chunk)}/{len(objects)} objects", file=sys.stderr, flush=True)
    return per_object, seconds


def summarize(per_object: dict) -> tuple[dict, dict]:
    """Each row's means with bootstrap intervals, and the paired differences the goals are about."""
    rng = np.random.default_rng(0)
    table = {
        f"{m}/N={n}": {k: bootstrap(np.array(v), rng) for k, v in per_object[m][n].items()}
        for m in METHODS
        for n in VIEW_COUNTS
    }
    paired = {}
    for n in VIEW_COUNTS:
        diffusion = {k: np.array(v) for k, v in per_object["diffusion"][n].items()}
        for other in ("upsrt", "no_scene_attention"):
            paired[f"diffusion - {other}/N={n}"] = {
                k: bootstrap(diffusion[k] - np.array(per_object[other][n][k]), rng) for k in diffusion
            }
    for method in ("diffusion", "upsrt"):
        first, last = (np.array(per_object[method][n]["psnr"]) for n in (1, 6))
        paired[f"{method}: N=6 - N=1"] = {"psnr": bootstrap(last - first, rng)}
    return table, paired


def print_table(table: dict, paired: dict) -> None:
    """The rows with their intervals."""
    print(f"{'row':<36}{'PSNR':>24}{'SSIM':>24}{'sharpness':>24}")
    for name, row in {**table, **paired}.items():
        cells = "".join(
            f"{f'{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]':>24}" if (v := row.get(k)) else f"{'':>24}"
            for k in ("psnr", "ssim", "sharpness")
        )
        print(f"{name:<36}{cells}")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (or merge partial runs), print the table, write the JSON (and the sample sheet)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/toy-upfusion")
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0, help="skip this many held-out objects (tuning runs)")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument(
        "--counts", default="1,2,3,6", help="input-view counts N to run (a partial run: a subset)"
    )
    parser.add_argument("--merge", nargs="+", default=None, help="partial JSONs (other --counts) to merge")
    parser.add_argument("--chunk", type=int, default=25, help="objects per batched denoising loop")
    parser.add_argument("--view-seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/upfusion_toy.json")
    parser.add_argument("--samples", default="results/upfusion_samples.png")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.upfusion_toy " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    pipe = UpFusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.upsrt.config.image_size
    seeds = split_seeds("heldout", args.objects, args.offset)
    objects = [{"seed": s, **object_views(s, args.queries, size, args.view_seed)} for s in seeds]
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        per_object = {m: {int(n): v for p in parts for n, v in p["per_object"][m].items()} for m in METHODS}
        seconds = {m: sum(p["seconds"][m] for p in parts) for m in parts[0]["seconds"]}
        command = " ; ".join([*(p["command"] for p in parts), command])
    else:
        per_object, seconds = measure(pipe, objects, [int(n) for n in args.counts.split(",")], args)
    complete = all(n in per_object["diffusion"] for n in VIEW_COUNTS)
    table, paired = summarize(per_object) if complete else ({}, {})
    views_total = len(objects) * args.queries * len(per_object["diffusion"])
    result = {
        "command": command,
        "model": args.model,
        "objects": len(objects),
        "heldout_seeds": [seeds[0], seeds[-1]],
        "queries_per_object": args.queries,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "view_seed": args.view_seed,
        "seconds": seconds,
        "seconds_per_query_view": {m: s / views_total for m, s in seconds.items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
        },  # fmt: skip
        "table": table,
        "paired_differences": paired,
        "intervals": "mean [95% percentile bootstrap over objects, 4000 draws]",
        "per_object": per_object,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if complete:
        print_table(table, paired)
    print(
        "seconds per query view (CPU):", {m: round(s, 3) for m, s in result["seconds_per_query_view"].items()}
    )
    if args.samples and complete:
        sample_sheet(pipe, objects, args, Path(args.samples))
    return result


if __name__ == "__main__":
    main()
