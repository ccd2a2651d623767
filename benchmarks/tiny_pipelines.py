"""Time to build each tiny offline pipeline, save and reload it, and generate one 2-step 32x32 image.

    python benchmarks/tiny_pipelines.py      # prints a table, writes results/tiny_pipelines.json

The foundation's goal is < 5 s each on a CPU; tests do not assert wall-clock times, this script measures them.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from fixtures.tiny import TINY_PIPELINES, save_and_reload

    rows = []
    for name, build in TINY_PIPELINES.items():
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            pipe = save_and_reload(build(), folder)
        loaded = time.perf_counter()
        pipe.set_progress_bar_config(disable=True)
        pipe(
            "a red circle",
            num_inference_steps=2,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(0),
        )
        done = time.perf_counter()
        rows.append({"pipeline": name, "build_save_load_s": loaded - start, "generate_s": done - loaded,
                     "total_s": done - start})  # fmt: skip
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"tiny pipelines, 2 steps, 32x32; {machine}")
    print(f"{'pipeline':<10}{'build+save+load s':>19}{'generate s':>12}{'total s':>10}")
    for r in rows:
        print(
            f"{r['pipeline']:<10}{r['build_save_load_s']:>19.2f}{r['generate_s']:>12.2f}{r['total_s']:>10.2f}"
        )
    out = Path("results/tiny_pipelines.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
