"""Batch-job throughput: items per second of `headhunter batch` at several batch sizes, same job file, one run.

    python benchmarks/batch_throughput.py [--items 256] [--sizes 1 4 16] [--model assets/toy-sd3]

Each batch size writes into a fresh folder (nothing is skipped). Prints a table and writes
results/batch_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--model", default=None, help="default: assets/toy-sd3")
    parser.add_argument("--pag-heads", default="L3H1", help="heads every job uses (SoftPAG on)")
    parser.add_argument("--out", default="results/batch_throughput.json")
    args = parser.parse_args()

    import torch

    from pipelines.headhunter import HeadHunterPipeline
    from tools.batch import BatchRunner, plan
    from tools.settings import DEFAULT_MODEL, recommended_settings

    model = args.model or str(DEFAULT_MODEL)
    pipe = HeadHunterPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    defaults = {
        k: v for k, v in recommended_settings(model).items() if k in ("num_inference_steps", "guidance_scale")
    }
    colors, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        lines = [{"prompt": f"a {colors[i % 4]} {shapes[i // 4 % 3]}", "seed": i, "pag_heads": args.pag_heads}
                 for i in range(args.items)]  # fmt: skip
        jobs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        items, _ = plan(jobs, defaults, None)
        for size in args.sizes:
            runner = BatchRunner(pipe, model, Path(tmp) / f"out{size}", batch_size=size)
            counts = runner.run(items, progress=True)
            rows.append({"batch_size": size, "items": counts["ok"], "seconds": counts["seconds"],
                         "items_per_second": counts["items_per_second"]})  # fmt: skip
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"{args.items} items, model {model}, heads {args.pag_heads}, {defaults}; {machine}")
    print(f"{'batch size':>10}{'items':>8}{'seconds':>10}{'items/s':>10}")
    for r in rows:
        print(f"{r['batch_size']:>10}{r['items']:>8}{r['seconds']:>10.1f}{r['items_per_second']:>10.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "model": model, "args": vars(args), "rows": rows},
                                         indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
