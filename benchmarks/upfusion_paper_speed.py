"""Seconds per novel view and peak memory of UpFusion at the paper's sizes (random weights, no download).

`CONFIGS["paper"]`: DINOv2 ViT-B/14 keys, the official UpSRT, SD1.5's UNet + ControlNet with scene-token blocks on
32x32 latents, the VAE, CLIP's text model; the paper preset's CFG 9 (two rows per query view) and DDIM steps.
For each dtype and each number of input views N, one warm-up call, then `--repeats` timed calls rendering
`--queries` views each; the fastest counts. Peak memory is the accelerator's `max_memory_allocated` (CUDA), or the
process's peak resident memory on the CPU (whole-process and monotone, so only the first row on the CPU is its
own). Meant for a GPU (`--config paper`); `--config paper-tiny --device cpu` rehearses it in seconds.

    python benchmarks/upfusion_paper_speed.py --device cuda --dtypes bf16 fp16 --views 1 3 6 \
        --steps 50 --queries 4 --out results/upfusion_paper_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging as diffusers_logging

from pipelines.upfusion import CONFIGS, build_upfusion

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def input_views(n: int, size: int, seed: int = 0) -> list[PIL.Image.Image]:
    """N random RGB input images (the cost does not depend on their content)."""
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA's max_memory_allocated, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_row(pipe, views: int, args, device: torch.device) -> dict:
    """One (dtype, N) row: fastest of `repeats` calls after a warm-up, seconds per query view, peak memory."""
    images = input_views(views, args.image_size)
    cameras = [(360.0 * q / args.queries, 10.0) for q in range(args.queries)]

    def call() -> None:
        pipe(images=images, query_cameras=cameras, num_inference_steps=args.steps, output_type="pt",
             generator=torch.Generator().manual_seed(0))  # fmt: skip

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    call()
    best = float("inf")
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return {"views": views, "seconds_per_view": best / args.queries, "seconds_per_call": best,
            "peak_memory_gib": peak_memory(device) / 2**30}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Build the pipeline once per dtype, time every N, print the table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper", choices=[c for c in CONFIGS if "vae" in CONFIGS[c]])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=tuple(DTYPES))
    parser.add_argument("--views", nargs="+", type=int, default=[1, 3, 6])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (the paper's 50)")
    parser.add_argument("--queries", type=int, default=4, help="query views per call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--image-size", type=int, default=256, help="input image side (resized by the pipeline)"
    )
    parser.add_argument("--out", default="results/upfusion_paper_speed.json")
    args = parser.parse_args(argv)
    diffusers_logging.set_verbosity_error()  # `.to(dtype)` warns once per component
    if not all(1 <= n <= 6 for n in args.views):
        parser.error(f"--views: each N must be in 1..6; got {args.views}")
    device = torch.device(args.device)
    rows = []
    for name in args.dtypes:
        pipe = build_upfusion(args.config).to(device, DTYPES[name])
        pipe.set_progress_bar_config(disable=True)
        for n in args.views:
            rows.append({"dtype": name, **time_row(pipe, n, args, device)})
            row = rows[-1]
            print(
                f"{name:5s} N={n}  {row['seconds_per_view']:8.3f} s/view  {row['peak_memory_gib']:7.2f} GiB"
            )
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    machine = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"}  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": machine, "settings": settings, "rows": rows}, indent=1) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
