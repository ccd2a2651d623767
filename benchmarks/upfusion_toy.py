"""UpFusion on held-out toy objects, against baselines that ignore or copy the input (N = 1, 2, 3, 6 unposed views).

    python -m benchmarks.upfusion_toy --model assets/toy-upfusion --objects 100 --queries 4 --samples 4

For every held-out object `6 + queries` views are ray-cast (toyworld.views, the benchmark's own view seed); the
first N of the 6 input views are the inputs, the query views are rendered relative to the first input view and
scored against the ray-cast truth: PSNR, SSIM and foreground-silhouette IoU (pixels that differ from the white
background). Every row uses the same objects, views and noise, so differences are paired per object (the mean
over its query views); intervals are 95% percentile bootstrap intervals over objects (guidance.stats).

Rows, for every N:
- references that ignore the input: `white` (the background), `mean_training_image` (the mean render of
  training-split objects); references that copy it: `mean_of_inputs` (the mean of the N input images) and
  `nearest_input` (the input view whose camera is closest to the query's: it uses the poses, which the model
  never gets, so it is an upper reference, not a fair baseline);
- `upsrt`: UpSRT's regression render;
- diffusion sampling (DDIM, `--steps`) at CFG 1 and at `--guidance`, `--samples` samples per query view:
  the mean PSNR over the samples, the best of them (an oracle choice) and the PSNR of their average;
  `diffusion_other_tokens`: sampled at `--guidance` with another object's scene tokens (the hint stays its own);
- noise-free measures per condition (`full`, `no_scene_attention`, `other_object_tokens`, `no_hint`,
  `unconditional`): the v-prediction loss on a fixed grid of timesteps with fixed noise, and the PSNR of the
  clean-image prediction at the first sampling timestep (pure noise in, the model's mean guess out).
  `no_hint` (scene tokens without the hint) is a condition training never shows the model (its dropout removes
  both, or the scene alone): a diagnostic outside the training distribution, not an ablation.
A query view's covisibility (the share of its object pixels that some input view also sees,
toyworld.views.covisibility) stratifies the PSNR of every row. `--world cubes|detail` and `--layout curriculum`
(inputs spread around the object; in the cubes world queries from the far side of the first view) measure the
curriculum worlds (docs/toyworld_views.md).

`--no-diffusion` runs the references and UpSRT only (what the stage-1 gate needs: benchmarks/upfusion_gate.py).
`--model` takes a pipeline folder or a training checkpoint folder (toyworld.train.upfusion's OUT/checkpoint).
Writes `--out` (JSON with per-object values) and, with `--sheet`, a sample sheet (inputs | UpSRT | diffusion |
truth for 4 objects at N = 1, 3, 6).
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
from guidance.stats import paired_difference
from guidance.upfusion import SceneCall
from pipelines.upfusion import UpFusionPipeline, denoiser_output, diffusion_hint
from toyworld.views import covisibility, curriculum_views, sample_views, split_seeds

VIEW_COUNTS = (1, 2, 3, 6)
REFERENCES = ("white", "mean_training_image", "mean_of_inputs", "nearest_input")
CONDITIONS = ("full", "no_scene_attention", "other_object_tokens", "no_hint", "unconditional")
TIMESTEPS = (100, 300, 500, 700, 900)
METRICS = ("psnr", "ssim", "iou")
FOREGROUND = 0.1  # a pixel is object when some channel is this far below the white background
COVISIBILITY_BINS = ((0.0, 0.5), (0.5, 0.9), (0.9, 1.0001))

# ----------------------------------------------------------------------------------------------------------
# Data and references
# ----------------------------------------------------------------------------------------------------------


def object_views(
    seed: int,
    queries: int,
    size: int,
    view_seed: int,
    world: str = "general",
    layout: str = "random",
    n: int = 6,
) -> dict[str, torch.Tensor]:
    """Input views and `queries` query views of one object; poses relative to input 0.

    layout "random": six random views as inputs (the first N are used) and `queries` more; "curriculum": n inputs
    spread around the object and queries (the far side of input 0 in the cubes world), toyworld.views."""
    if layout == "random":
        data = sample_views(seed, 6 + queries, size, seed=view_seed, world=world)
        inputs, query = torch.arange(6), torch.arange(6, 6 + queries)
    else:
        data = curriculum_views(seed, n, queries, size, world=world, seed=view_seed)
        inputs, query = data["inputs"], data["queries"]
    relative = relative_cameras(data["c2w"], data["c2w"][inputs[0]])
    return {
        "seed": seed,
        "object": data["object"],
        "input_world_c2w": data["c2w"][inputs],
        "query_world_c2w": data["c2w"][query],
        "inputs": data["images"][inputs],
        "truth": data["images"][query],
        "input_c2w": relative[inputs],
        "query_c2w": relative[query],
    }


def mean_training_image(size: int, objects: int = 200, views: int = 8) -> torch.Tensor:
    """The mean render (3, S, S) of training-split objects: a constant image that ignores the input."""
    images = [sample_views(s, views, size, seed=0)["images"] for s in split_seeds("train", objects)]
    return torch.cat(images).mean(0)


def nearest_input(obj: dict, n: int) -> torch.Tensor:
    """For each query, the input view (of the first n) whose viewing direction is closest: (Q, 3, S, S)."""
    forward = lambda c2w: c2w[..., :3, 2]  # noqa: E731  OpenCV: the camera looks along +z
    cosine = forward(obj["query_c2w"]) @ forward(obj["input_c2w"][:n]).T  # (Q, n)
    return obj["inputs"][:n][cosine.argmax(dim=1)]


def reference_outputs(obj: dict, n: int, mean_image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four reference rows' images (Q, 3, S, S) for one object with n inputs."""
    q = obj["truth"].shape[0]
    return {
        "white": torch.ones_like(obj["truth"]),
        "mean_training_image": mean_image.expand(q, -1, -1, -1),
        "mean_of_inputs": obj["inputs"][:n].mean(0).expand(q, -1, -1, -1),
        "nearest_input": nearest_input(obj, n),
    }


# ----------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------


def psnr(output: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB of (Q, 3, S, S) images in [0, 1]."""
    mse = ((output.double() - truth.double()) ** 2).mean((1, 2, 3)).numpy()
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def foreground(images: torch.Tensor) -> torch.Tensor:
    """Object pixels (Q, S, S): some channel at least FOREGROUND below white."""
    return (1.0 - images).amax(dim=1) > FOREGROUND


def silhouette_iou(output: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Per-image IoU of the foreground silhouettes (1 where both are empty)."""
    a, b = foreground(output), foreground(truth)
    inter, union = (a & b).sum((1, 2)).double(), (a | b).sum((1, 2)).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).numpy()


def scores(output: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image PSNR, SSIM and silhouette IoU of outputs vs truth, both (Q, 3, S, S) in [0, 1]."""
    out, gt = (x.permute(0, 2, 3, 1).double().numpy() for x in (output, truth))
    ssim = np.array([structural_similarity(a, b, channel_axis=-1, data_range=1.0) for a, b in zip(out, gt)])
    return {"psnr": psnr(output, truth), "ssim": ssim, "iou": silhouette_iou(output, truth)}


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


def load_model(path: str) -> tuple[UpFusionPipeline, bool]:
    """A pipeline folder, or a training checkpoint folder (UpSRT trained, the diffusion model maybe not).

    Returns the pipeline and whether its diffusion model was trained (a pipeline folder: yes)."""
    folder = Path(path)
    if (folder / "model_index.json").exists():
        return UpFusionPipeline.from_pretrained(folder), True
    if (folder / "state.json").exists():
        from toyworld.train.upfusion import pipeline_from_checkpoint

        pipe, state = pipeline_from_checkpoint(folder)
        return pipe, "diffusion" in state.get("done", []) or state.get("stage") == "diffusion"
    raise SystemExit(
        f"--model {path}: neither a pipeline folder (model_index.json) nor a checkpoint (state.json)"
    )


@torch.no_grad()
def upsrt_outputs(pipe: UpFusionPipeline, chunk: list[dict], n: int) -> tuple[torch.Tensor, ...]:
    """UpSRT's scene tokens (B, T, D), renders (B*Q, 3, S, S), features (B*Q, C, S, S) and query poses (B*Q, 4, 4)."""
    inputs = torch.stack([o["inputs"][:n] for o in chunk])
    poses = torch.stack([o["query_c2w"] for o in chunk])
    scene = pipe.upsrt.encode(inputs)
    rgb, features = pipe.upsrt.render(scene, poses)
    return scene, rgb.flatten(0, 1), features.flatten(0, 1), poses.flatten(0, 1)


@torch.no_grad()
def sample_rows(pipe, scene, hint, poses, seeds: list[int], args, guidance: float) -> torch.Tensor:
    """`args.samples` DDIM samples per row: (samples, R, 3, S, S); one generator per row and sample."""
    k, rows = args.samples, poses.shape[0]
    generators = [torch.Generator().manual_seed(s * 16 + j) for j in range(k) for s in seeds]
    out = pipe.denoise(
        scene.repeat(k, 1, 1),
        hint.repeat(k, 1, 1, 1),
        poses.repeat(k, 1, 1),
        args.steps,
        guidance,
        generators,
    )
    return out.unflatten(0, (k, rows))


def condition_inputs(condition: str, scene, other, hint, rows: int) -> tuple[torch.Tensor, ...]:
    """Scene tokens, hint and per-row scene keep-mask of one noise-free condition (`other`: another object's)."""
    keep, none = torch.ones(rows), torch.zeros(rows)
    return {
        "full": (scene, hint, keep),
        "no_scene_attention": (scene, hint, none),
        "other_object_tokens": (other, hint, keep),
        "no_hint": (scene, torch.zeros_like(hint), keep),
        "unconditional": (scene, torch.zeros_like(hint), none),
    }[condition]


@torch.no_grad()
def noise_free(pipe, scene_rows, other_rows, hint, poses, truth, seeds: list[int]) -> dict[str, dict]:
    """Per row and condition: v-loss averaged over TIMESTEPS (fixed noise) and the x0-prediction PSNR at t_max."""
    scheduler, rows = pipe.scheduler, poses.shape[0]
    x0 = truth * 2 - 1
    noise = torch.stack(
        [torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    alphas = scheduler.alphas_cumprod
    t_max = scheduler.config.num_train_timesteps - 1
    out = {}
    for condition in CONDITIONS:
        scene, h, keep = condition_inputs(condition, scene_rows, other_rows, hint, rows)
        call = SceneCall(poses, pipe.upsrt.config.focal, pipe.upsrt.config.image_size, keep)
        losses = []
        with pipe.scene_attention(call):
            for t in (*TIMESTEPS, t_max):
                ts = torch.full((rows,), t, dtype=torch.long)
                x_t = scheduler.add_noise(x0, noise, ts)
                v = denoiser_output(pipe.unet, pipe.controlnet, x_t, ts, scene, h)
                if t == t_max:
                    a = alphas[t].sqrt()
                    clean = (a * x_t - (1 - alphas[t]).sqrt() * v).clamp(-1, 1) / 2 + 0.5
                else:
                    losses.append(((v - scheduler.get_velocity(x0, noise, ts)) ** 2).mean((1, 2, 3)))
        out[condition] = {"v_loss": torch.stack(losses).mean(0).numpy(), "x0_psnr": psnr(clean, truth)}
    return out


# ----------------------------------------------------------------------------------------------------------
# The measurement
# ----------------------------------------------------------------------------------------------------------


def measure(pipe, views: dict[int, list[dict]], counts: list[int], args, diffusion: bool) -> dict:
    """Per-object values {row: {N: {metric: [...]}}} and per-query-view PSNR for the covisibility strata."""
    mean_image = mean_training_image(pipe.upsrt.config.image_size)
    per_object: dict = {}
    per_view: dict = {}
    seconds = {"upsrt": 0.0, "sampling": 0.0, "noise_free": 0.0}

    def add(row: str, n: int, values: dict[str, np.ndarray], q: int) -> None:
        cell = per_object.setdefault(row, {}).setdefault(n, {})
        for key, v in values.items():
            cell.setdefault(key, []).extend(np.asarray(v).reshape(-1, q).mean(1).tolist())
        if "psnr" in values:
            per_view.setdefault(row, {}).setdefault(n, []).extend(np.asarray(values["psnr"]).tolist())

    q = args.queries
    for n in counts:
        objects = views[n]
        for i in range(0, len(objects), args.chunk):
            chunk = objects[i : i + args.chunk]
            truth = torch.cat([o["truth"] for o in chunk])
            for obj in chunk:
                for row, image in reference_outputs(obj, n, mean_image).items():
                    add(row, n, scores(image, obj["truth"]), q)
            start = time.perf_counter()
            scene, rgb, features, poses = upsrt_outputs(pipe, chunk, n)
            seconds["upsrt"] += time.perf_counter() - start
            add("upsrt", n, scores(rgb, truth), q)
            if diffusion:
                hint = diffusion_hint(pipe.upsrt, features, poses)
                scene_rows = scene.repeat_interleave(q, dim=0)
                others = [objects[(i + j + 1) % len(objects)] for j in range(len(chunk))]  # next object's
                other_rows = upsrt_outputs(pipe, others, n)[0].repeat_interleave(q, dim=0)
                seeds = [o["seed"] * 100 + k for o in chunk for k in range(q)]
                start = time.perf_counter()
                for row, guidance, tokens in (
                    ("diffusion_cfg1", 1.0, scene_rows),
                    ("diffusion", args.guidance, scene_rows),
                    ("diffusion_other_tokens", args.guidance, other_rows),
                ):
                    samples = sample_rows(pipe, tokens, hint, poses, seeds, args, guidance)
                    per_sample = [scores(s, truth) for s in samples]
                    add(row, n, {k: np.mean([s[k] for s in per_sample], 0) for k in METRICS}, q)
                    add(f"{row}_best_of_k", n, {"psnr": np.max([s["psnr"] for s in per_sample], 0)}, q)
                    add(f"{row}_averaged", n, {"psnr": psnr(samples.mean(0), truth)}, q)
                seconds["sampling"] += time.perf_counter() - start
                start = time.perf_counter()
                for condition, values in noise_free(
                    pipe, scene_rows, other_rows, hint, poses, truth, seeds
                ).items():
                    add(f"noise_free/{condition}", n, values, q)
                seconds["noise_free"] += time.perf_counter() - start
            print(f"N={n}: {i + len(chunk)}/{len(objects)} objects", file=sys.stderr, flush=True)
    return {"per_object": per_object, "per_view_psnr": per_view, "seconds": seconds}


def covisibilities(views: dict[int, list[dict]], counts: list[int], size: int) -> dict[int, list[float]]:
    """Per query view (object-major) and N: the share of its object pixels some input view sees."""
    return {
        n: [
            float(c)
            for o in views[n]
            for c in covisibility(o["object"], o["input_world_c2w"][:n], o["query_world_c2w"], size)
        ]
        for n in counts
    }


def summarize(per_object: dict, counts: list[int]) -> tuple[dict, dict]:
    """Each row's means with intervals (against 0), and the paired differences the goals are about."""
    interval = lambda a, b: paired_difference(a, b, seed=0, resamples=4000)  # noqa: E731
    table = {
        f"{row}/N={n}": {k: interval(v, np.zeros(len(v))) for k, v in cells[n].items()}
        for row, cells in per_object.items()
        for n in counts
        if n in cells
    }
    paired = {}
    base = per_object["mean_of_inputs"]
    models = [r for r in ("upsrt", "diffusion", "diffusion_cfg1") if r in per_object]
    for row in models:
        for n in counts:
            paired[f"{row} - mean_of_inputs/N={n}"] = {
                k: interval(per_object[row][n][k], base[n][k]) for k in METRICS
            }
    for row in (*models, "mean_of_inputs", "nearest_input"):
        if 1 in counts and 6 in counts:
            paired[f"{row}: N=6 - N=1"] = {
                "psnr": interval(per_object[row][6]["psnr"], per_object[row][1]["psnr"])
            }
    if "diffusion_other_tokens" in per_object:
        for n in counts:
            paired[f"diffusion - diffusion_other_tokens/N={n}"] = {
                k: interval(per_object["diffusion"][n][k], per_object["diffusion_other_tokens"][n][k])
                for k in METRICS
            }
            own, other = per_object["noise_free/full"][n], per_object["noise_free/other_object_tokens"][n]
            paired[f"noise_free: other_tokens - own/N={n}"] = {
                "v_loss": interval(other["v_loss"], own["v_loss"]),
                "x0_psnr": interval(own["x0_psnr"], other["x0_psnr"]),  # own - other: > 0 is good
            }
    return table, paired


def stratify(per_view: dict, covis: dict[int, list[float]]) -> dict:
    """Mean PSNR per row, N and covisibility bin (query views pooled)."""
    out = {}
    for row, cells in per_view.items():
        for n, values in cells.items():
            c, v = np.asarray(covis[n]), np.asarray(values)
            for low, high in COVISIBILITY_BINS:
                mask = (c >= low) & (c < high)
                if mask.any():
                    out[f"{row}/N={n}/covis [{low:.1f}, {min(high, 1):.1f}]"] = {
                        "psnr": float(v[mask].mean()),
                        "views": int(mask.sum()),
                    }
    return out


def _cell(result: dict | None) -> str:
    return f"{result['mean']:.3f} [{result['low']:.3f}, {result['high']:.3f}]" if result else ""


def print_table(table: dict, paired: dict) -> None:
    """The rows and the paired differences with their intervals."""
    keys = ("psnr", "ssim", "iou", "v_loss", "x0_psnr")
    print(f"{'row':<52}" + "".join(f"{k:>26}" for k in keys))
    for name, row in {**table, **paired}.items():
        print(f"{name:<52}" + "".join(f"{_cell(row.get(k)):>26}" for k in keys))


def sample_sheet(pipe, views: dict[int, list[dict]], args, path: Path, diffusion: bool) -> None:
    """inputs (6 slots) | UpSRT | diffusion | truth of the first query view, 4 objects x N = 1, 3, 6, 4x (nearest)."""
    rows = []
    first = next(iter(views.values()))
    blank = torch.full_like(first[0]["truth"][0], 1.0)
    for k in range(min(4, len(first))):
        for n in (1, 3, 6):
            obj = views[n][k] if n in views else first[k]
            scene, rgb, features, poses = upsrt_outputs(pipe, [obj], n)
            shown = obj["inputs"][:n]
            tiles = [*shown, *[blank] * (6 - len(shown)), rgb[0]]
            if diffusion:
                hint = diffusion_hint(pipe.upsrt, features, poses)
                sample = pipe.denoise(
                    scene.repeat_interleave(poses.shape[0], 0), hint, poses, args.steps, args.guidance,
                    [torch.Generator().manual_seed(obj["seed"] * 100 + k) for k in range(poses.shape[0])],
                )  # fmt: skip
                tiles.append(sample[0])
            tiles.append(obj["truth"][0])
            rows.append(
                torch.cat([torch.nn.functional.pad(t, (1, 1, 1, 1), value=1.0) for t in tiles], dim=-1)
            )
    sheet = torch.cat(rows, dim=-2).permute(1, 2, 0).numpy()
    image = PIL.Image.fromarray((sheet * 255).round().astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((image.width * 4, image.height * 4), PIL.Image.NEAREST).save(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="assets/toy-upfusion", help="a pipeline folder or a checkpoint folder"
    )
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0, help="skip this many held-out objects")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4, help="diffusion samples per query view (k)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.5, help="the recommended CFG")
    parser.add_argument("--counts", default="1,2,3,6", help="input-view counts N")
    parser.add_argument("--no-diffusion", action="store_true", help="references and UpSRT only")
    parser.add_argument("--chunk", type=int, default=25, help="objects per batched model call")
    parser.add_argument("--view-seed", type=int, default=7)
    parser.add_argument("--world", default="general", choices=("general", "cubes", "detail"))
    parser.add_argument(
        "--layout", default="random", choices=("random", "curriculum"),
        help="random views, or inputs spread around the object (toyworld.views.curriculum_views)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/upfusion_toy.json")
    parser.add_argument("--sheet", default=None, help="write a sample sheet PNG here")
    args = parser.parse_args(argv)
    args.command = "python -m benchmarks.upfusion_toy " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def run(args: argparse.Namespace) -> dict:
    """Measure, summarise, print, and write the JSON (and the sheet)."""
    torch.set_num_threads(args.threads)
    pipe, trained = load_model(args.model)
    pipe.set_progress_bar_config(disable=True)
    diffusion = trained and not args.no_diffusion
    size = pipe.upsrt.config.image_size
    seeds = split_seeds("heldout", args.objects, args.offset)
    if len(seeds) < 2:
        raise SystemExit("--objects must be >= 2 (the other-object rows need another object)")
    counts = [int(n) for n in args.counts.split(",")]
    view = lambda s, n: object_views(s, args.queries, size, args.view_seed, args.world, args.layout, n)  # noqa: E731
    if args.layout == "random":  # the same six inputs for every N (the first N of them)
        shared = [view(s, 6) for s in seeds]
        views = dict.fromkeys(counts, shared)
    else:  # N inputs spread around the object, per N
        views = {n: [view(s, n) for s in seeds] for n in counts}
    objects = views[counts[0]]
    start = time.perf_counter()
    measured = measure(pipe, views, counts, args, diffusion)
    table, paired = summarize(measured["per_object"], counts)
    covis = covisibilities(views, counts, size)
    strata = stratify(measured["per_view_psnr"], covis)
    total_views = len(objects) * args.queries * len(counts)
    result = {
        "command": args.command,
        "model": args.model,
        "objects": len(objects),
        "heldout_seeds": [seeds[0], seeds[-1]],
        "queries_per_object": args.queries,
        "samples_per_query": args.samples if diffusion else 0,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "view_seed": args.view_seed,
        "world": args.world,
        "layout": args.layout,
        "covisibility": {str(n): float(np.nanmean(c)) for n, c in covis.items()},
        "diffusion": diffusion,
        "seconds": {**measured["seconds"], "total": time.perf_counter() - start},
        "seconds_per_query_view": {k: v / total_views for k, v in measured["seconds"].items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
        },  # fmt: skip
        "table": table,
        "paired_differences": paired,
        "covisibility_strata": strata,
        "intervals": "mean [95% percentile bootstrap over objects, 4000 resamples]; table rows against 0",
        "notes": "noise_free/no_hint is outside the training distribution (dropout never removes the hint alone); "
        "a checkpoint folder mid-stage-2 holds raw weights, not the EMA the final model gets",
        "per_object": measured["per_object"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print_table(table, paired)
    for name, cell in strata.items():
        print(f"{name:<60}{cell['psnr']:8.3f}  ({cell['views']} views)")
    print(
        "seconds per query view (CPU):", {k: round(v, 4) for k, v in result["seconds_per_query_view"].items()}
    )
    if args.sheet:
        sample_sheet(pipe, views, args, Path(args.sheet), diffusion)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark from the command line."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
