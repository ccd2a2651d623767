"""Batch engines side by side: images per second of `headhunter batch` with `--engine local` and `--engine ray`
(1 and 2 actors), whole commands in fresh folders (start-up, model loading and cluster start included), and the
engines' own overhead on jobs that do almost nothing (1 step, 32 px).

    python benchmarks/batch_engines.py [--items 48] [--model assets/toy-sd3] [--rounds 2]

Rows run round-robin `--rounds` times; the fastest round of each counts. Prints a table and writes
results/batch_engines.json with the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = {"local": [], "ray, 1 actor": ["--engine", "ray", "--workers", "1"],
        "ray, 2 actors": ["--engine", "ray", "--workers", "2"]}  # fmt: skip
PROMPTS = ("a red circle", "a blue square", "a green triangle", "a red square")


def run(model: str, jobs: Path, engine: list[str], steps: int, size: int, batch: int) -> float:
    """Seconds of one whole `headhunter batch` into a fresh folder (fails loudly if the command fails)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "tools.cli", "batch", str(jobs), "--out", out, "--model", model,
               "--steps", str(steps), "--height", str(size), "--width", str(size), "--batch-size", str(batch),
               "--quiet", *engine]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--model", default=str(ROOT / "assets" / "toy-sd3"))
    parser.add_argument("--steps", type=int, default=10, help="steps of the throughput rows")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results" / "batch_engines.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        jobs.write_text("".join(json.dumps({"id": f"j{i}", "prompt": PROMPTS[i % 4], "seed": i}) + "\n"
                                for i in range(args.items)))  # fmt: skip
        kinds = {"work": (args.steps, 64), "overhead": (1, 32)}
        best = {(kind, row): float("inf") for kind in kinds for row in ROWS}
        for _ in range(args.rounds):
            for kind, (steps, size) in kinds.items():
                for row, engine in ROWS.items():
                    seconds = run(args.model, jobs, engine, steps, size, args.batch_size)
                    best[kind, row] = min(best[kind, row], seconds)
    rows = []
    print(f"{args.items} items, batch size {args.batch_size}, {os.cpu_count()} cores")
    print(f"{'engine':15s} {'img/s (' + str(args.steps) + ' steps, 64 px)':>26s} {'s, whole':>9s} "
          f"{'overhead s (1 step, 32 px)':>28s} {'vs local':>9s}")  # fmt: skip
    for row in ROWS:
        work, overhead = best["work", row], best["overhead", row]
        rows.append({"engine": row, "images_per_second": args.items / work, "seconds": work,
                     "overhead_seconds": overhead, "overhead_vs_local": overhead - best["overhead", "local"]})  # fmt: skip
        print(f"{row:15s} {args.items / work:26.2f} {work:9.1f} {overhead:28.1f} "
              f"{overhead - best['overhead', 'local']:+9.1f}")  # fmt: skip
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count(),
               "python": platform.python_version()}  # fmt: skip
    Path(args.out).write_text(
        json.dumps({"machine": machine, "settings": vars(args), "rows": rows}, indent=1) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
