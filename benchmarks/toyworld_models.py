"""The toy models on the model-free evaluator: scores at CFG 1, 3, 5, 7 on held-in and held-out prompts, and the
time to generate 64 images at the default resolution with 20 steps.

    python benchmarks/toyworld_models.py                      # every toy model under assets/
    python benchmarks/toyworld_models.py --models assets/toy-sd3 --prompts 50 --seeds 2

Prompt sets (toyworld.measure.prompt_scenes, disjoint from the training pool): single-object and two-object
captions on held-in colour-shape pairings, and the same on the held-out pairings. Each (prompt, seed) gives one
image; the evaluator scores it against the caption. "CFG" is guidance_scale for SD3/SD1.5 and true_cfg_scale
(against the empty prompt) for the toy FLUX model, which is not guidance-distilled.

The timing row runs the plain diffusers pipeline exactly as a user would (StableDiffusion3Pipeline with all of
its max_sequence_length zero T5 tokens), 64 prompts in batches of 16 at the recommended CFG. For SD3 the
score grid uses toyworld.inference.RepeatedTokenJointAttnProcessor, which collapses the identical zero tokens
exactly (same images up to float rounding, ~4x faster); the timing table reports both.

Writes results/toyworld/models.json and prints one table per model.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCORES = ("correct", "binding", "presence", "position", "quality")
SETS = (
    ("single", "train", 1),
    ("two", "train", 2),
    ("heldout_single", "heldout", 1),
    ("heldout_two", "heldout", 2),
)


def load(folder: Path):
    """The plain diffusers pipeline of a toy folder (class from model_index.json) and its toyworld.json."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe, json.loads((folder / "toyworld.json").read_text())


def call_kwargs(pipe, settings: dict, cfg: float, steps: int) -> dict:
    """The call arguments for one CFG value, per architecture."""
    kwargs = {"num_inference_steps": steps, "height": settings["height"], "width": settings["width"]}
    name = type(pipe).__name__
    if name == "FluxPipeline":
        kwargs.update(
            true_cfg_scale=cfg, negative_prompt="", max_sequence_length=settings["max_sequence_length"]
        )
    else:
        kwargs["guidance_scale"] = cfg
        if name == "StableDiffusion3Pipeline":
            kwargs["max_sequence_length"] = settings["max_sequence_length"]
    return kwargs


def generate(pipe, prompts: list[str], seeds: list[int], kwargs: dict, batch: int) -> list:
    """One image per (prompt, seed)."""
    import torch

    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        extra = (
            {"negative_prompt": [kwargs["negative_prompt"]] * len(chunk)}
            if "negative_prompt" in kwargs
            else {}
        )
        images += pipe(
            prompt=chunk,
            generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + batch]],
            **{**kwargs, **extra},
        ).images
    return images


def shortcut(pipe, settings: dict, on: bool) -> None:
    """Toggle the exact one-token shortcut for the SD3 toy model's zero T5 tokens."""
    if type(pipe).__name__ != "StableDiffusion3Pipeline":
        return
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from toyworld.inference import RepeatedTokenJointAttnProcessor

    count = settings["max_sequence_length"]
    pipe.transformer.set_attn_processor(
        RepeatedTokenJointAttnProcessor(count) if on else JointAttnProcessor2_0()
    )


def measure_model(folder: Path, args) -> dict:
    """The CFG grid and the timing rows of one toy model."""
    import torch

    from toyworld.evaluator import evaluate
    from toyworld.measure import prompt_scenes
    from toyworld.scenes import canonical_caption

    pipe, settings = load(folder)
    is_sd3 = type(pipe).__name__ == "StableDiffusion3Pipeline"
    counts = {"train": args.prompts, "heldout": args.heldout_prompts}
    grid = {}
    for cfg in args.cfg:
        grid[str(cfg)] = {}
        for name, split, n_objects in SETS:
            scenes = prompt_scenes(split, n_objects, counts[split])
            prompts = [canonical_caption(s) for s in scenes for _ in range(args.seeds)]
            seeds = [k for _ in scenes for k in range(args.seeds)]
            kwargs = call_kwargs(pipe, settings, cfg, args.steps)
            if is_sd3:
                shortcut(pipe, settings, True)
                kwargs["max_sequence_length"] = 1
            images = generate(pipe, prompts, seeds, kwargs, args.batch)
            scored = [evaluate(im, p) for im, p in zip(images, prompts)]
            row = {}
            for key in SCORES:
                values = [s[key] for s in scored if s.get(key) is not None]
                row[key] = round(float(np.mean(values)), 4) if values else None
            row["n_images"] = len(images)
            grid[str(cfg)][name] = row
            print(f"{folder.name} cfg={cfg} {name}: " + json.dumps(row), flush=True)
    shortcut(pipe, settings, False)

    timing = {}
    prompts = [canonical_caption(s) for s in prompt_scenes("train", 2, args.time_images)]
    kwargs = call_kwargs(pipe, settings, settings.get("true_cfg_scale", settings["guidance_scale"]), 20)
    variants = [("plain pipeline, recommended settings", False, {})]
    if is_sd3 and settings["max_sequence_length"] != 256:
        variants.append(
            ("plain pipeline, 256 zero T5 tokens (diffusers' default)", False, {"max_sequence_length": 256})
        )
    if is_sd3 and settings["max_sequence_length"] != 1:
        variants.append(("zero-T5 shortcut", True, {"max_sequence_length": 1}))
    generate(pipe, prompts[:2], [0, 1], kwargs, 2)  # warm-up
    for label, on, override in variants:
        shortcut(pipe, settings, on)
        call = {**kwargs, **override}
        start = time.perf_counter()
        generate(pipe, prompts, list(range(len(prompts))), call, 16)
        timing[label] = round(time.perf_counter() - start, 2)
        print(f"{folder.name} {len(prompts)} images, 20 steps, {label}: {timing[label]} s", flush=True)
    shortcut(pipe, settings, False)
    return {
        "pipeline": type(pipe).__name__,
        "settings": settings,
        "cfg_kind": "true_cfg_scale" if type(pipe).__name__ == "FluxPipeline" else "guidance_scale",
        "grid": grid,
        "time_images": len(prompts),
        "time_20_steps_s": timing,
        "threads": torch.get_num_threads(),
    }


def table(name: str, result: dict) -> str:
    """A markdown table: one row per CFG, columns per prompt set."""
    lines = [
        f"### {name} ({result['pipeline']}, {result['cfg_kind']})",
        "",
        "| CFG | one object: colour+shape / all correct | two: binding / all correct | held-out one object "
        "| held-out two | quality |",
        "|---|---|---|---|---|---|",
    ]
    for cfg, sets in result["grid"].items():
        cells = [f"{sets[name]['binding']:.3f} / {sets[name]['correct']:.3f}" for name, _, _ in SETS]
        lines.append(f"| {cfg} | " + " | ".join(cells) + f" | {sets['single']['quality']:.3f} |")
    lines.append("")
    n = result["time_images"]
    lines += [f"{n} images, 20 steps, {k}: {v} s" for k, v in result["time_20_steps_s"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, default=None, help="default: assets/toy-*")
    parser.add_argument(
        "--cfg", nargs="*", type=float, default=[1.0, 3.0, 5.0, 7.0], help="none: timing only"
    )
    parser.add_argument("--prompts", type=int, default=50, help="held-in prompts per set")
    parser.add_argument("--heldout-prompts", type=int, default=50, help="held-out prompts per set")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--time-images", type=int, default=64, help="images in the timing row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/toyworld/models.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    models = args.models or sorted(p for p in Path("assets").glob("toy-*") if (p / "toyworld.json").is_file())
    results = {}
    for folder in models:
        results[folder.name] = measure_model(folder, args)
        results[folder.name]["command"] = "python benchmarks/toyworld_models.py " + " ".join(sys.argv[1:])
        print(table(folder.name, results[folder.name]), flush=True)
    earlier = json.loads(args.out.read_text())["models"] if args.out.is_file() else {}  # read at write time
    for name, result in results.items():
        if not result["grid"] and name in earlier:  # --cfg with no values: timing only
            result["grid"] = earlier[name]["grid"]
    results = {**earlier, **results}
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}, torch "
        f"{torch.__version__}, {args.threads} threads",
        "command": "python benchmarks/toyworld_models.py " + " ".join(sys.argv[1:]),
        "prompts_per_set": {"held-in": args.prompts, "held-out": args.heldout_prompts},
        "seeds_per_prompt": args.seeds,
        "steps": args.steps,
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
