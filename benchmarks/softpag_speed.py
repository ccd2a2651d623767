"""Step time and peak memory: CFG, CFG + SoftPAG (ours) and diffusers' StableDiffusion3PAGPipeline, side by side.

A mid-size random SD3 transformer (no download); the perturbed layer sits at half depth. Each variant runs in its
own subprocess so its peak resident memory (ru_maxrss) is its own; each subprocess times `--steps` denoising
steps after one warm-up call; variants run round-robin `--rounds` times and the fastest round of each counts. Prints a table and writes JSON to results/softpag_speed.json.

    python benchmarks/softpag_speed.py [--steps 8] [--layers 12] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("cfg", "cfg+softpag", "cfg+softpag-joint", "cfg+softpag-no-prefix", "cfg+diffusers-pag")


def build(folder: Path, layers: int) -> None:
    """Save a mid-size random SD3 pipeline: 8 heads x 32 dims per layer."""
    from pipelines.tiny import tiny_sd3

    tiny_sd3(num_layers=layers, num_heads=8, head_dim=32).save_pretrained(folder)


def worker(variant: str, folder: str, layers: int, size: int, steps: int, threads: int) -> dict:
    """Time one variant; returns seconds per step and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    split = layers // 2
    if variant == "cfg+diffusers-pag":
        from diffusers import StableDiffusion3PAGPipeline

        pipe = StableDiffusion3PAGPipeline.from_pretrained(
            folder,
            text_encoder_3=None,
            tokenizer_3=None,
            pag_applied_layers=[rf"^transformer_blocks\.{split}\.attn$"],
        )
        extra = dict(pag_scale=3.0, pag_adaptive_scale=0.0)
    else:
        from pipelines.headhunter import HeadHunterPipeline

        pipe = HeadHunterPipeline.from_pretrained(folder)
        heads = ",".join(f"L{split}H{h}" for h in range(8))
        identity = "joint" if variant == "cfg+softpag-joint" else "image"  # diffusers' PAG is "image"
        extra = {} if variant == "cfg" else dict(pag_heads=heads, pag_scale=3.0, pag_identity=identity)
        if variant == "cfg+softpag-no-prefix":
            extra["pag_shared_prefix"] = False
    pipe.set_progress_bar_config(disable=True)

    def run(n: int) -> float:
        start = time.perf_counter()
        pipe("a red circle", num_inference_steps=n, height=size, width=size, guidance_scale=5.0,
             output_type="latent", generator=torch.Generator().manual_seed(0), **extra)  # fmt: skip
        return time.perf_counter() - start

    run(1)  # warm-up
    seconds = run(steps)
    return {
        "variant": variant,
        "seconds_per_step": seconds / steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--size", type=int, default=128, help="image size; tokens = (size/4)^2")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (1 is robust to a busy CPU)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repeats; the fastest round counts")
    parser.add_argument("--out", default="results/softpag_speed.json")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.layers, args.size, args.steps, args.threads)))
        return

    # Round-robin over the variants, keeping each one's fastest round: load from other processes on the machine
    # then slows every variant alike instead of whichever happened to run during it.
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder), args.layers)
        for _ in range(args.rounds):
            for variant in VARIANTS:
                cmd = [sys.executable, __file__, "--worker", variant, "--folder", folder, "--layers",
                       str(args.layers), "--size", str(args.size), "--steps", str(args.steps), "--threads",
                       str(args.threads)]  # fmt: skip
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                if variant not in best or row["seconds_per_step"] < best[variant]["seconds_per_step"]:
                    best[variant] = row
    rows = [best[v] for v in VARIANTS]
    base = rows[0]
    for row in rows:
        row["time_vs_cfg"] = row["seconds_per_step"] / base["seconds_per_step"]
        row["rss_vs_cfg"] = row["peak_rss_mib"] / base["peak_rss_mib"]
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch threads {args.threads}".strip()
    print(f"SD3 random: {args.layers} layers x 8 heads x 32 dims, {(args.size // 4) ** 2} image tokens, "
          f"perturbed layer {args.layers // 2}, CFG 5, batch 1; {machine}")  # fmt: skip
    print(f"{'variant':<24}{'s/step':>10}{'x CFG':>8}{'peak RSS MiB':>14}{'x CFG':>8}")
    for r in rows:
        print(f"{r['variant']:<24}{r['seconds_per_step']:>10.3f}{r['time_vs_cfg']:>8.2f}"
              f"{r['peak_rss_mib']:>14.0f}{r['rss_vs_cfg']:>8.2f}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
