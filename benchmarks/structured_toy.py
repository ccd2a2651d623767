"""Structured attention on toy models: two-object binding accuracy (model-free evaluator) on held-in and held-out
colour-shape pairings, for the plain pipeline and each structured mode, with step time relative to plain.

    python benchmarks/structured_toy.py --model assets/toy-sd3 [--prompts 100] [--seeds 2]
    python benchmarks/structured_toy.py --model assets/toy-sd15 --attend-and-excite

Variants: plain; key-value; conjunction (the official code's, UNets);
the MMDiT port (SD3, key-value); diffusers' Attend-and-Excite (`--attend-and-excite`, SD1.x only). Writes
results/structured_<model>.json and prints a table, then each variant's paired difference against plain on the
same prompt-seed pairs with a 95% bootstrap interval (`guidance.stats`; * = the interval excludes 0).

Besides binding (the share of the prompt's colour-shape pairs found in the image), the table gives leakage: the
share of the prompt's objects whose shape was drawn in the *other* object's colour ("a red circle and a blue
square" -> a blue circle). That is the failure StructureDiffusion targets; a held-out pair drawn in a colour
the prompt does not name (the model's habit for that shape) is not leakage.
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


def scenes(split: str, count: int, seed: int):
    """Two-object scenes without style words, deterministic from `seed`."""
    from toyworld.scenes import sample_scene

    return [sample_scene(seed * 100_000 + i, split, n_objects=2, style_prob=0.0) for i in range(count)]


def leakage(detections, scene) -> float | None:
    """Share of the scene's two objects whose shape was detected in the other object's colour (None when the two
    objects share a colour or a shape, where leakage is not defined)."""
    (a, b) = scene.objects
    if a.color == b.color or a.shape == b.shape:
        return None
    found = {(d.color, d.shape) for d in detections}
    return (((b.color, a.shape) in found) + ((a.color, b.shape) in found)) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=100, help="prompts per split")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--attend-and-excite", action="store_true")
    parser.add_argument("--variants", nargs="+", default=None, help="run only these (plain is always run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from guidance.stats import paired_difference
    from pipelines.headhunter import StructuredDiffusionPipeline
    from tools.settings import recommended_call
    from toyworld.evaluator import detect, evaluate
    from toyworld.scenes import canonical_caption

    pipe = StructuredDiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    call = recommended_call(args.model)
    is_sd3 = type(pipe).__name__ == "HeadHunterSD3Pipeline"
    variants = {"plain": {}, "key-value": {"structured": "key-value"}}
    if not is_sd3:
        variants["conjunction"] = {"structured": "conjunction"}
    if args.attend_and_excite and not is_sd3:
        variants["attend-and-excite"] = None

    if args.variants:
        unknown = sorted(set(args.variants) - set(variants))
        if unknown:
            parser.error(
                f"--variants: {unknown} not available for this model; choose from {sorted(variants)}"
            )
        variants = {k: v for k, v in variants.items() if k == "plain" or k in args.variants}

    def attend_and_excite(prompts, generators):
        from diffusers import StableDiffusionAttendAndExcitePipeline

        ae = StableDiffusionAttendAndExcitePipeline.from_pipe(pipe)
        ae.set_progress_bar_config(disable=True)
        # Attention maps are gathered at the resolution of the first cross-attention down block.
        first = next(i for i, t in enumerate(pipe.unet.config.down_block_types) if "CrossAttn" in t)
        side = pipe.unet.config.sample_size // 2**first
        images = []
        for prompt, generator in zip(prompts, generators, strict=True):
            tokens = ae.get_indices(prompt)  # {index: token}
            nouns = [
                i for i, t in tokens.items() if t.removesuffix("</w>") in ("circle", "square", "triangle")
            ]
            images += ae(
                prompt, token_indices=nouns, generator=generator, attn_res=(side, side), **call
            ).images
        return images

    results: dict = {
        "model": args.model,
        "call": call,
        "prompts_per_split": args.prompts,
        "seeds": args.seeds,
        "first_seed": args.first_seed,
    }
    per_item: dict = {}
    for split in ("train", "heldout"):
        specs = scenes(split, args.prompts, 1 if split == "train" else 2)
        items = [
            (canonical_caption(s), s, seed)
            for s in specs
            for seed in range(args.first_seed, args.first_seed + args.seeds)
        ]
        for name, extra in variants.items():
            binding, leaks, seconds = [], [], 0.0
            for start in range(0, len(items), args.batch):
                chunk = items[start : start + args.batch]
                prompts = [p for p, _, _ in chunk]
                generators = [torch.Generator().manual_seed(seed) for _, _, seed in chunk]
                t0 = time.perf_counter()
                if extra is None:
                    images = attend_and_excite(prompts, generators)
                else:
                    images = pipe(prompts, generator=generators, **call, **extra).images
                seconds += time.perf_counter() - t0
                for image, (_, scene, _) in zip(images, chunk, strict=True):
                    binding.append(evaluate(image, scene)["binding"])
                    leaks.append(leakage(detect(image)[0], scene))
            per_item[name, split] = (binding, leaks)
            defined = [x for x in leaks if x is not None]
            results.setdefault(name, {})[split] = {
                "binding": float(np.mean(binding)),
                "n": len(binding),
                "leakage": float(np.mean(defined)) if defined else None,
                "n_leakage": len(defined),
                "seconds_per_image": seconds / len(items),
            }
            if name != "plain":
                results[name][split].update(_paired(per_item, name, split, paired_difference))
            leaks = defined
            print(
                f"{split:<8}{name:<20}binding {np.mean(binding):.3f}  leakage {np.mean(leaks) if leaks else 0:.3f}"
                f"  ({seconds / len(items):.3f} s/image)",
                flush=True,
            )
    for name in variants:
        base = (
            results["plain"]["train"]["seconds_per_image"] + results["plain"]["heldout"]["seconds_per_image"]
        )
        mine = results[name]["train"]["seconds_per_image"] + results[name]["heldout"]["seconds_per_image"]
        results[name]["time_vs_plain"] = mine / base
    results["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    print(f"\n{Path(args.model).name}: two-object binding, {args.prompts} prompts x {args.seeds} seeds per split; "
          f"{results['machine']}")  # fmt: skip
    print(
        f"{'variant':<20}{'binding in':>11}{'binding out':>12}{'leak in':>9}{'leak out':>10}{'time x plain':>14}"
    )
    for name in variants:
        r = results[name]
        print(f"{name:<20}{r['train']['binding']:>11.3f}{r['heldout']['binding']:>12.3f}"
              f"{r['train']['leakage'] or 0:>9.3f}{r['heldout']['leakage'] or 0:>10.3f}{r['time_vs_plain']:>14.2f}")  # fmt: skip
    print("\npaired differences against plain (same prompt-seed pairs), mean [95% bootstrap interval]:")
    for name in variants:
        if name == "plain":
            continue
        for split in ("train", "heldout"):
            r = results[name][split]
            print(
                f"{name:<20}{split:<8} binding {_fmt(r['binding_vs_plain'])}  leakage {_fmt(r['leakage_vs_plain'])}"
            )
    out = Path(args.out or f"results/structured_{Path(args.model).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def _paired(per_item: dict, name: str, split: str, paired_difference) -> dict:
    """Binding and leakage of `name` minus plain on the same prompt-seed pairs (leakage where both defined)."""
    binding, leaks = per_item[name, split]
    plain_binding, plain_leaks = per_item["plain", split]
    both = [(a, b) for a, b in zip(leaks, plain_leaks, strict=True) if a is not None and b is not None]
    return {
        "binding_vs_plain": paired_difference(binding, plain_binding),
        "leakage_vs_plain": paired_difference([a for a, _ in both], [b for _, b in both])
        if len(both) > 1
        else None,
    }


def _fmt(result: dict | None) -> str:
    if result is None:
        return "n/a"
    mark = "*" if result["significant"] else " "
    return f"{result['mean']:+.3f} [{result['low']:+.3f}, {result['high']:+.3f}]{mark} (n={result['n']})"


if __name__ == "__main__":
    main()
