"""Covisibility of the toy multi-view worlds: how much of a query view N input views see at all.

    python -m benchmarks.views_covisibility --objects 200 --threads 1

For every world (toyworld.views.WORLDS), N = 1, 2, 3, 6 and held-out object, two view layouts:

- random: ``sample_views``' 6 + 4 random views; inputs are the first N of views 0-5 and the queries views 6-9
  (the layout of benchmarks.upfusion_toy);
- curriculum: ``curriculum_views`` with N inputs spread around the object and 4 queries (in the cubes world
  on the far side of input 0); input 0 and the queries are the same for every N.

An object's value is the mean ``toyworld.views.covisibility`` of its 4 queries (one ray per pixel). Prints
the mean over objects with a 95% percentile-bootstrap interval (``guidance.stats.paired_difference`` against
0) and writes results/views_covisibility.json with the command, the machine and the per-object values.
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
import torch

from guidance.stats import paired_difference
from toyworld.views import WORLDS, covisibility, curriculum_views, sample_views, split_seeds

VIEW_COUNTS = (1, 2, 3, 6)
LAYOUTS = ("random", "curriculum")


def object_values(seed: int, world: str, layout: str, args: argparse.Namespace) -> dict[int, float]:
    """Mean covisibility of one object's query views for each N."""
    if layout == "random":
        views = sample_views(seed, 6 + args.queries, args.size, seed=args.view_seed, antialias=1, world=world)
        poses = views["c2w"]
        return {
            n: covisibility(views["object"], poses[:n], poses[6:], args.size).mean().item()
            for n in VIEW_COUNTS
        }
    values = {}
    for n in VIEW_COUNTS:
        views = curriculum_views(seed, n, args.queries, args.size, world, seed=args.view_seed, antialias=1)
        poses = views["c2w"]
        values[n] = covisibility(views["object"], poses[views["inputs"]], poses[views["queries"]], args.size)
        values[n] = values[n].mean().item()
    return values


def measure(args: argparse.Namespace) -> dict:
    """Per-object values {layout: {world: {N: [...]}}} on the first ``args.objects`` held-out objects."""
    seeds = split_seeds("heldout", args.objects)
    per_object = {}
    for layout in LAYOUTS:
        per_object[layout] = {}
        for world in WORLDS:
            start = time.perf_counter()
            rows = [object_values(s, world, layout, args) for s in seeds]
            per_object[layout][world] = {n: [r[n] for r in rows] for n in VIEW_COUNTS}
            print(f"{layout}/{world}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return per_object


def summarize(per_object: dict) -> dict:
    """Mean and 95% bootstrap interval over objects for every layout, world and N."""
    interval = lambda v: paired_difference(v, np.zeros(len(v)), seed=0)  # noqa: E731
    return {
        layout: {world: {n: interval(v) for n, v in cells.items()} for world, cells in worlds.items()}
        for layout, worlds in per_object.items()
    }


def table(summary: dict) -> str:
    """The printed table: one row per layout and world, one column per N (percent, 95% interval)."""
    cell = lambda r: f"{100 * r['mean']:5.1f} [{100 * r['low']:5.1f}, {100 * r['high']:5.1f}]"  # noqa: E731
    lines = [f"{'layout':<11} {'world':<8} " + " ".join(f"{f'N={n}':<20}" for n in VIEW_COUNTS)]
    for layout, worlds in summary.items():
        for world, cells in worlds.items():
            lines.append(f"{layout:<11} {world:<8} " + " ".join(f"{cell(cells[n]):<20}" for n in VIEW_COUNTS))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200, help="held-out objects per world (>= 100)")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="image size in pixels (one ray per pixel)")
    parser.add_argument("--view-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default="results/views_covisibility.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table and write the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    per_object = measure(args)
    summary = summarize(per_object)
    report = {
        "command": "python -m benchmarks.views_covisibility " + " ".join(argv),
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "seconds": time.perf_counter() - start,
        "seeds": split_seeds("heldout", args.objects),
        "summary": summary,
        "per_object": per_object,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"Covisibility (%), mean over {args.objects} held-out objects of {args.queries} queries each, 95% CI"
    )
    print(table(summary))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
