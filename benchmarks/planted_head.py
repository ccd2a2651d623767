"""Planted-head check, full version: does the head search find a head built to darken the image, and from how
many prompt-seed pairs?

    python benchmarks/planted_head.py [--pairs 1 2 4 8 16] [--steps 2]

A tiny random SD3 (4 layers x 4 heads) gets head L3H1 rewired by `plant_head` (tests/test_planted_head.py).
For each pair count n, the single-head sweep with objective `darkness` on the first n pairs ranks all 16 heads;
the table gives the planted head's rank and its gain against the best other head. Also: how much the plant
changes the unguided images. Writes results/planted_head.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default="results/planted_head.json")
    args = parser.parse_args()

    import torch
    from test_planted_head import PLANTED, plant_head

    from fixtures.tiny import tiny_sd3
    from guidance.objectives import get_objective
    from guidance.search import HeadSearch, SearchSettings, label
    from pipelines.headhunter import HeadHunterPipeline

    words = ["a red circle", "a blue square", "a green triangle", "a circle", "a square", "a red square",
             "a blue circle", "a green circle"]  # fmt: skip
    settings = SearchSettings(prompts=words, seeds=[0, 1], steps=args.steps, size=32, batch=32, validation=0)
    objective = get_objective("darkness")
    plain = HeadHunterPipeline.from_pipe(tiny_sd3())
    plain.set_progress_bar_config(disable=True)
    unplanted = HeadSearch(plain, objective, settings, progress=False).baseline
    pipe = HeadHunterPipeline.from_pipe(tiny_sd3())
    pipe.set_progress_bar_config(disable=True)
    plant_head(pipe, *PLANTED)
    search = HeadSearch(pipe, objective, settings, progress=False)
    rows = []
    for n in args.pairs:
        pairs = search.search_pairs[:n]
        scores = {c[0]: v for c, v in search.evaluate([(h,) for h in search.all_heads()], pairs).items()}
        base = search.evaluate([()], pairs)[()]
        ranking = sorted(scores, key=lambda h: -scores[h])
        other = max(v for h, v in scores.items() if h != PLANTED)
        rows.append({"pairs": n, "rank": ranking.index(PLANTED) + 1, "planted_gain": scores[PLANTED] - base,
                     "best_other": label((ranking[0] if ranking[0] != PLANTED else ranking[1],)),
                     "best_other_gain": other - base})  # fmt: skip
    report = {"planted": label((PLANTED,)), "heads": len(search.all_heads()), "objective": "darkness",
              "steps": args.steps, "unguided_unplanted": unplanted, "unguided_planted": search.baseline,
              "rows": rows, "images": search.images,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__}}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"planted {report['planted']} among {report['heads']} heads; unguided darkness {unplanted:.4f} -> "
          f"{search.baseline:.4f} with the plant")  # fmt: skip
    print(f"{'pairs':>5} {'rank':>4} {'planted gain':>12} {'best other':>10} {'its gain':>8}")
    for r in rows:
        print(f"{r['pairs']:5d} {r['rank']:4d} {r['planted_gain']:12.4f} {r['best_other']:>10} "
              f"{r['best_other_gain']:8.4f}")  # fmt: skip
    print(args.out)


if __name__ == "__main__":
    main()
