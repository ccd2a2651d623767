"""Successive halving against the full single-head sweep on the toy SD3 (same model, objective, pairs).

    python benchmarks/search_halving.py [--prompts 2] [--seeds 2] [--steps 5] [--start 1] [--keep 0.5] [--k 4]
    python benchmarks/search_halving.py --model assets/toy-sd15 --objective toy-fidelity --prompts 16 --seeds 2 \
        --steps 20 --start 4 --pag-scale 1 --out results/search_halving-sd15-fidelity.json

Each method runs in a fresh `HeadSearch` without a cache, so its image count is its own. Prints the top-k of
each, their overlap, the images generated and the wall time; writes results/search_halving.json with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(pipe, objective, settings, method: str, **options) -> dict:
    """One sweep in a fresh search: its ranking, scores, images (unguided baseline included) and wall time."""
    from guidance.search import HeadSearch, label

    start = time.perf_counter()
    search = HeadSearch(pipe, objective, settings, progress=False)
    sweep = search.sweep(method, **options)
    seconds = time.perf_counter() - start
    return {"method": method, "options": options, "seconds": round(seconds, 1), "images": search.images,
            "unguided": search.baseline, "ranking": [label((h,)) for h in sweep["ranking"]],
            "scores": {label((h,)): v for h, v in sweep["scores"].items()}, "rungs": sweep["rungs"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the shipped toy SD3 (assets/toy-sd3)")
    parser.add_argument("--objective", default="toy-dark")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--start", type=int, default=1, help="pairs of the first halving rung")
    parser.add_argument("--keep", type=float, default=0.5, help="share of heads kept per rung")
    parser.add_argument("--k", type=int, default=4, help="top-k compared (halving keeps at least 2k)")
    parser.add_argument("--pag-scale", type=float, default=3.0, help="w while scoring heads")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="results/search_halving.json")
    args = parser.parse_args()

    import torch

    from benchmarks.headhunter_toy import prompts
    from guidance.objectives import get_objective
    from guidance.search import SearchSettings
    from pipelines.headhunter import HeadHunterPipeline
    from tools.settings import model_call_extras, recommended_settings

    root = Path(__file__).resolve().parent.parent
    model = args.model or str(root / "assets" / "toy-sd3")
    pipe = HeadHunterPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    objective = get_objective(args.objective)
    settings = SearchSettings(prompts=prompts(args.prompts, 1), seeds=list(range(args.seeds)), steps=args.steps,
                              guidance_scale=recommended_settings(model).get("guidance_scale", 4.0), batch=args.batch,
                              model=model, objective=objective.name, extra=model_call_extras(model),
                              pag_scale=args.pag_scale, validation=0, size=recommended_settings(model).get("height"))  # fmt: skip
    full = run(pipe, objective, settings, "full")
    halving = run(pipe, objective, settings, "halving", start=args.start, keep=args.keep, min_keep=2 * args.k)
    top_full, top_halving = full["ranking"][: args.k], halving["ranking"][: args.k]
    report = {
        "model": str(Path(model).resolve().relative_to(root)) if Path(model).resolve().is_relative_to(root) else model,
        "objective": objective.name, "pairs": len(settings.prompts) * len(settings.seeds), "steps": args.steps,
        "guidance_scale": settings.guidance_scale, "pag_scale": settings.pag_scale, "k": args.k,
        "top_k_full": top_full, "top_k_halving": top_halving, "top_k_overlap": len(set(top_full) & set(top_halving)),
        "same_top_1": top_full[0] == top_halving[0], "full": full, "halving": halving,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"model {report['model']}, objective {objective.name}, {report['pairs']} pairs, {args.steps} steps")
    print(f"{'method':8} {'images':>7} {'seconds':>8}  top-{args.k}")
    for r in (full, halving):
        print(f"{r['method']:8} {r['images']:7d} {r['seconds']:8.1f}  {', '.join(r['ranking'][: args.k])}")
    print(f"top-{args.k} overlap {report['top_k_overlap']}/{args.k}; same best head: {report['same_top_1']}")
    print(args.out)


if __name__ == "__main__":
    main()
