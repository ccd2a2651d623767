"""Measure a toy-world pipeline with the model-free evaluator: held-in single/two-object prompts and held-out pairs.

    python -m toyworld.measure --model assets/toy-sd3 --out results/toyworld/quality-sd3.json

Prompts are canonical captions of scenes drawn from fixed seeds (disjoint from the training pool's seeds),
each generated with several seeds at the model's recommended settings (toyworld.json) unless overridden.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from toyworld.evaluator import evaluate
from toyworld.scenes import Scene, canonical_caption, sample_scene

REPORTED = (
    "correct",
    "binding",
    "color_presence",
    "shape_presence",
    "presence",
    "position",
    "count",
    "outlined",
    "dark_background",
    "score",
    "palette_purity",
    "sharpness",
    "cleanliness",
    "artifact_free",
    "quality",
    "overall",
)

# (name, split, objects): the prompt sets, drawn from their own generators (not the training pool's)
PROMPT_SETS: tuple[tuple[str, str, int], ...] = (
    ("single", "train", 1),
    ("two", "train", 2),
    ("heldout_single", "heldout", 1),
    ("heldout_two", "heldout", 2),
)


def prompt_scenes(split: str, n_objects: int, count: int, seed: int = 10**6) -> list[Scene]:
    """`count` deterministic scenes for a prompt set (one generator per set)."""
    rng = random.Random(f"{seed}-{split}-{n_objects}")
    return [sample_scene(rng, split=split, n_objects=n_objects) for _ in range(count)]


def load_pipeline(model: str, fast: bool, zero_t5_tokens: int | None = None):
    """Load a toy StableDiffusion3Pipeline or StableDiffusionPipeline and its toyworld.json; for SD3 `fast`
    collapses the zero T5 tokens exactly. (The toy FLUX model has its own: python -m toyworld.train.flux measure.)"""
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline
    from diffusers.utils import logging

    from toyworld.inference import RepeatedTokenJointAttnProcessor

    logging.set_verbosity_error()
    pipe = DiffusionPipeline.from_pretrained(model)
    if not isinstance(pipe, (StableDiffusion3Pipeline, StableDiffusionPipeline)):
        raise ValueError(
            f"--model {model}: {type(pipe).__name__} is not measured here (StableDiffusion3Pipeline or "
            "StableDiffusionPipeline; toy FLUX: python -m toyworld.train.flux measure)"
        )
    pipe.set_progress_bar_config(disable=True)
    settings = json.loads((Path(model) / "toyworld.json").read_text())
    settings.setdefault("max_sequence_length", None)  # None: the pipeline has no T5 length (SD1.5)
    if fast and settings["max_sequence_length"] is not None:
        count = zero_t5_tokens or settings["max_sequence_length"]
        pipe.transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(count))
    return pipe, settings


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    cfg: float,
    batch: int,
    fast: bool,
    max_sequence_length: int | None,
    desc: str = "generate",
) -> list:
    """One image per (prompt, seed), in batches (SD3: with `max_sequence_length` zero T5 tokens, one when
    `fast`; None for pipelines without T5)."""
    images = []
    extra = {} if max_sequence_length is None else {"max_sequence_length": 1 if fast else max_sequence_length}
    for i in tqdm(range(0, len(prompts), batch), desc=desc, mininterval=10, file=sys.stdout):
        out = pipe(
            prompt=prompts[i : i + batch],
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + batch]],
            **extra,
        )
        images.extend(out.images)
    return images


def summarise(scores: list[dict]) -> dict:
    """Mean of each reported score over the images where it is defined."""
    summary = {}
    for key in REPORTED:
        values = [s[key] for s in scores if s.get(key) is not None]
        summary[key] = round(float(np.mean(values)), 4) if values else None
    summary["n_images"] = len(scores)
    return summary


def measure_set(
    pipe,
    scenes: list[Scene],
    n_seeds: int,
    steps: int,
    cfg: float,
    batch: int,
    fast: bool,
    max_sequence_length: int | None,
    desc: str,
) -> tuple[dict, list]:
    """Generate and score every scene's canonical caption with `n_seeds` seeds."""
    prompts = [canonical_caption(s) for s in scenes for _ in range(n_seeds)]
    seeds = [k for _ in scenes for k in range(n_seeds)]
    images = generate(pipe, prompts, seeds, steps, cfg, batch, fast, max_sequence_length, desc)
    scored = [
        evaluate(image, scene) for image, scene in zip(images, [s for s in scenes for _ in range(n_seeds)])
    ]
    summary = summarise(scored)
    for style, pick in (
        ("dark", lambda s: s.dark),
        ("outlined", lambda s: s.outlined),
        ("plain", lambda s: not s.dark and not s.outlined),
    ):
        subset = [r for r, s in zip(scored, [s for s in scenes for _ in range(n_seeds)]) if pick(s)]
        summary[f"correct_{style}"] = (
            round(float(np.mean([r["correct"] for r in subset])), 4) if subset else None
        )
    return summary, list(zip(prompts, images))


def sample_grid(pairs: list, path: Path, columns: int = 8, scale: int = 2) -> None:
    """Save the first images as a grid PNG (captions go to a .txt file beside it)."""
    from PIL import Image

    pairs = pairs[: columns * 4]
    w, h = pairs[0][1].size
    grid = Image.new("RGB", (columns * w, ((len(pairs) + columns - 1) // columns) * h), "white")
    for i, (_, image) in enumerate(pairs):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST).save(path)
    path.with_suffix(".txt").write_text("".join(f"{i}: {prompt}\n" for i, (prompt, _) in enumerate(pairs)))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="assets/toy-sd3")
    parser.add_argument("--out", type=Path, default=Path("results/toyworld/quality-sd3.json"))
    parser.add_argument("--prompts", type=int, default=200, help="held-in prompts per set")
    parser.add_argument("--heldout-prompts", type=int, default=100, help="held-out prompts per set")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    parser.add_argument("--steps", type=int, default=None, help="default: toyworld.json")
    parser.add_argument(
        "--guidance-scale", type=float, nargs="+", default=None, help="one or more; default: toyworld.json"
    )
    parser.add_argument("--sets", nargs="+", default=[name for name, _, _ in PROMPT_SETS])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--exact-pipeline",
        action="store_true",
        help="run all max_sequence_length zero T5 tokens instead of the exact one-token shortcut",
    )
    parser.add_argument(
        "--samples", type=Path, default=None, help="PNG grid of single and two-object samples"
    )
    parser.add_argument(
        "--zero-t5-tokens",
        type=int,
        default=None,
        help="max_sequence_length to measure (default: toyworld.json)",
    )
    parser.add_argument(
        "--scene-seed", type=int, default=10**6, help="prompt sets' seed (another value: disjoint prompts)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fast = not args.exact_pipeline
    pipe, settings = load_pipeline(args.model, fast, args.zero_t5_tokens)
    if args.zero_t5_tokens:
        settings["max_sequence_length"] = args.zero_t5_tokens
    steps = args.steps or settings["num_inference_steps"]
    scales = args.guidance_scale or [settings["guidance_scale"]]
    counts = {"train": args.prompts, "heldout": args.heldout_prompts}
    result = {
        "model": args.model,
        "command": "python -m toyworld.measure " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": steps,
        "seeds_per_prompt": args.seeds,
        "scene_seed": args.scene_seed,
        "runs": [],
    }
    start = time.time()
    for cfg in scales:
        run = {"guidance_scale": cfg, "sets": {}}
        for name, split, n_objects in PROMPT_SETS:
            if name not in args.sets:
                continue
            scenes = prompt_scenes(split, n_objects, counts[split], args.scene_seed)
            summary, pairs = measure_set(
                pipe,
                scenes,
                args.seeds,
                steps,
                cfg,
                args.batch,
                fast,
                settings["max_sequence_length"],
                f"{name} cfg={cfg}",
            )
            run["sets"][name] = summary
            if args.samples and cfg == scales[0] and name in ("single", "two"):
                args.samples.parent.mkdir(parents=True, exist_ok=True)
                sample_grid(pairs[:: args.seeds], args.samples.with_name(f"{args.samples.stem}-{name}.png"))
            print(
                f"cfg={cfg:<4} {name:<15} "
                + " ".join(f"{k}={v}" for k, v in summary.items() if v is not None),
                flush=True,
            )
        result["runs"].append(run)
    result["elapsed_s"] = round(time.time() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
