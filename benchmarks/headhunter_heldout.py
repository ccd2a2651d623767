"""The HeadHunter claim on held-out pairs: searched heads against whole layers, unguided and random heads.

    python benchmarks/headhunter_heldout.py                  # toy SD1.5, 16 search pairs, L5 as the layer row
    python benchmarks/headhunter_heldout.py --model assets/toy-sd3 --search-prompts 64 --halving 6 --layers \
        --k 2 --rounds 2 --pool 4                            # toy SD3, a powered search by successive halving

1. Search (toy-fidelity, u = 1, w = `--scale`, the model's CFG, a 25% validation split with the validation stop)
   on two-object prompt-seed pairs from one scene seed: the single-head map over every head (`--halving N`:
   by successive halving from N pairs, so many more pairs are affordable), then greedy rounds of `--k` heads over
   its best `--pool` heads.
2. Evaluation on >= 800 other pairs (scenes from another seed, captions disjoint from the search's): unguided,
   whole-layer PAG on each of `--layers` (default L5, the toy SD1.5's best layer measured before), the searched
   heads and a random head set of the same size (u = 1, w = `--scale`). Each row is paired with the unguided
   images of the same pairs: mean difference with a 95% bootstrap interval (`guidance.stats`); `*` marks an
   interval that excludes 0.

Writes results/headhunter_<model folder>.json (per-pair values, the search's report, the machine) and prints the
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("score", "binding", "correct")


def evaluate_rows(pipe, call: dict, items: list, seeds: list[int], extra: dict, batch: int) -> dict:
    """Evaluator metrics per prompt-seed pair for one configuration."""
    import torch

    from toyworld.evaluator import evaluate

    pairs = [(caption, scene, seed) for caption, scene in items for seed in seeds]
    values: dict = {m: [] for m in METRICS}
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        generators = [torch.Generator().manual_seed(seed) for _, _, seed in chunk]
        images = pipe([c for c, _, _ in chunk], generator=generators, **call, **extra).images
        for image, (_, scene, _) in zip(images, chunk, strict=True):
            result = evaluate(image, scene)
            for m in METRICS:
                values[m].append(float(result[m] or 0.0))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/toy-sd15")
    parser.add_argument("--search-prompts", type=int, default=8)
    parser.add_argument(
        "--halving", type=int, default=0, help="head map by successive halving from this many pairs (0: full)"
    )
    parser.add_argument(
        "--pool", type=int, default=8, help="best heads of the map the greedy rounds draw from"
    )
    parser.add_argument(
        "--layers", type=int, nargs="*", default=[5], help="whole layers evaluated as rows (default: 5)"
    )
    parser.add_argument("--eval-prompts", type=int, default=400, help="0: search only, no evaluation rows")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="PAG scale w for every guided row")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", default=None, help="default: results/headhunter_<model folder>.json")
    args = parser.parse_args()

    import torch

    from guidance.adapters import heads_layout
    from guidance.objectives import get_objective
    from guidance.search import HeadSearch, SearchSettings, label
    from guidance.stats import paired_difference
    from guidance.swap import denoiser_of
    from pipelines import HeadHunterPipeline
    from tools.settings import recommended_call
    from toyworld.scenes import distinct_captions

    pipe = HeadHunterPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    call = recommended_call(args.model)
    layout = heads_layout(denoiser_of(pipe))
    seeds = list(range(args.seeds))

    t0 = time.perf_counter()
    search_items = distinct_captions(args.search_prompts, 11)
    settings = SearchSettings(
        prompts=[c for c, _ in search_items], seeds=seeds, steps=call["num_inference_steps"],
        guidance_scale=call["guidance_scale"], pag_scale=args.scale, strength=1.0, batch=args.batch,
        model=args.model, objective="toy-fidelity", k=args.k, rounds=args.rounds,
        extra={k: v for k, v in call.items() if k not in ("num_inference_steps", "guidance_scale")},
    )  # fmt: skip
    search = HeadSearch(pipe, get_objective("toy-fidelity"), settings)
    sweep = (
        search.sweep("halving", start=args.halving, min_keep=args.pool) if args.halving else search.sweep()
    )
    head_map, pool = sweep["scores"], sweep["ranking"][: args.pool]
    search.greedy(pool=pool)
    found = [tuple(h) for h in search.result["selected"]]
    search_seconds = time.perf_counter() - t0

    rng = random.Random(5)
    all_heads = [(site.layer, h) for site in layout.sites.values() for h in range(site.heads)]
    random_set = sorted(rng.sample(all_heads, len(found)))
    heads_of = {site.layer: site.heads for site in layout.sites.values()}
    rows = {"unguided": {}}
    for layer in args.layers:
        if layer not in heads_of:
            raise SystemExit(f"--layers: no layer {layer} in {args.model}; layers: {sorted(heads_of)}")
        rows[f"L{layer} (whole layer)"] = {"pag_heads": [(layer, h) for h in range(heads_of[layer])]}
    if found:  # an empty selection: no round beat the unguided images on the validation pairs
        rows[f"searched {label(tuple(found))}"] = {"pag_heads": found}
        rows[f"random {label(tuple(random_set))}"] = {"pag_heads": random_set}
    else:
        print("the search adopted no heads (none beat the unguided images on its validation pairs)")
    eval_items = distinct_captions(args.eval_prompts, 23, exclude={c for c, _ in search_items})
    if not eval_items:  # --eval-prompts 0: the search only (evaluate elsewhere, e.g. toy_guidance_sweep.py)
        rows = {}
    results, t1 = {}, time.perf_counter()
    for name, extra in rows.items():
        guided = dict(extra, pag_scale=args.scale, pag_strength=1.0) if extra else {}
        results[name] = evaluate_rows(pipe, call, eval_items, seeds, guided, args.batch)
        print(f"evaluated {name}", flush=True)
    eval_seconds = time.perf_counter() - t1

    table = {}
    for name in rows:
        if name == "unguided":
            continue
        table[name] = {m: paired_difference(results[name][m], results["unguided"][m]) for m in METRICS}
    report = {
        "model": args.model,
        "call": call,
        "search": {
            "pairs": args.search_prompts * args.seeds,
            "method": f"halving from {args.halving} pairs" if args.halving else "full",
            "rungs": sweep["rungs"],
            "pool": [label((h,)) for h in pool],
            "report": search.report(),
            "result": search.result,
            "seconds": search_seconds,
            "images": search.images,
            "head_map": {label((h,)): v for h, v in head_map.items()},
            "head_map_pairs": {label((h,)): n for h, n in sweep["pairs"].items()},
            "unguided": search.baseline,
        },  # fmt: skip
        "evaluation": {
            "pairs": len(eval_items) * len(seeds),
            "seconds": eval_seconds,
            "unguided": {m: sum(v) / len(v) for m, v in results.get("unguided", {}).items()},
            "values": results,
        },  # fmt: skip
        "differences_vs_unguided": table,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },  # fmt: skip
    }
    out = Path(args.out or f"results/headhunter_{Path(args.model).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{args.model}, {report['evaluation']['pairs']} evaluation pairs (disjoint from the "
          f"{report['search']['pairs']} search pairs), w {args.scale}, u 1; difference vs unguided [95% CI]")  # fmt: skip
    print(f"{'row':<34}" + "".join(f"{m:>32}" for m in METRICS))
    for name, metrics in table.items():
        cells = "".join(
            f"{r['mean']:>+10.3f} [{r['low']:+.3f}, {r['high']:+.3f}]{'*' if r['significant'] else ' '}"
            for r in metrics.values()
        )
        print(f"{name:<34}{cells}")
    print(out)


if __name__ == "__main__":
    main()
