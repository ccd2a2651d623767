"""HeadHunter on the toy SD3 model: searched heads vs layer-level PAG vs random heads, a style search, the effect
of u, and the cost of batched candidate evaluation. Search and evaluation use disjoint prompt-seed pairs.

    python benchmarks/headhunter_toy.py [--k 4] [--search-prompts 6] [--eval-prompts 12] [--seeds 3]

Writes results/headhunter_toy.json, the head map (results/headhunter_toy_headmap.png), the found presets
(assets/presets/toy-sd3-*.json) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def prompts(count: int, seed: int) -> list[str]:
    """Held-in toy-world captions (1-3 objects, no style words) from the scene generator."""
    from toyworld.scenes import canonical_caption, sample_scene

    rng = random.Random(seed)
    return [
        canonical_caption(sample_scene(rng.randrange(10**9), "train", style_prob=0.0)) for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--objective", default="toy-fidelity", help="the target objective of sections 1 and 3"
    )
    parser.add_argument("--k", type=int, default=4, help="heads added per greedy round")
    parser.add_argument("--rounds", type=int, default=2, help="greedy rounds (k * rounds <= 8 heads)")
    parser.add_argument("--search-prompts", type=int, default=6)
    parser.add_argument("--eval-prompts", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per search prompt")
    parser.add_argument("--eval-seeds", type=int, default=3, help="seeds per evaluation prompt")
    parser.add_argument("--random-sets", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="evaluation steps (default: the model's)")
    parser.add_argument(
        "--search-steps", type=int, default=10, help="steps while searching (fewer is faster)"
    )
    parser.add_argument("--pag-scale", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="results/headhunter_toy.json")
    parser.add_argument("--presets", default=None, help="where found presets go (default: assets/presets)")
    args = parser.parse_args()

    import torch

    from guidance.objectives import get_objective
    from guidance.search import HeadSearch, SearchSettings, heatmap, label, preset
    from pipelines.headhunter import HeadHunterPipeline
    from tools.settings import DEFAULT_MODEL, PRESETS, model_call_extras, recommended_settings

    model = args.model or str(DEFAULT_MODEL)
    root = Path(__file__).resolve().parent.parent
    shown = Path(model).resolve()
    shown = str(shown.relative_to(root)) if shown.is_relative_to(root) else model  # presets name it portably
    presets = Path(args.presets) if args.presets else PRESETS
    rec = recommended_settings(model)
    steps = args.steps or rec.get("num_inference_steps", 20)
    search_steps = args.search_steps
    cfg = rec.get("guidance_scale", 4.0)
    pipe = HeadHunterPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    search_prompts = prompts(args.search_prompts, 1)
    eval_prompts = prompts(args.eval_prompts, 2)
    seeds = list(range(args.seeds))
    eval_seeds = [100 + s for s in range(args.eval_seeds)]
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "headhunter_toy_cache"

    def settings(prompt_list, seed_list, objective, strength=1.0, n_steps=None):
        return SearchSettings(prompts=prompt_list, seeds=seed_list, steps=n_steps or search_steps, guidance_scale=cfg,
                              pag_scale=args.pag_scale, strength=strength, batch=args.batch, model=shown,
                              objective=objective, extra=model_call_extras(model),
                              size=recommended_settings(model).get("height"))  # fmt: skip

    def evaluator(objective_name, strength=1.0, guard=None):
        objective = get_objective(objective_name, guard, 0.05)
        return HeadSearch(
            pipe, objective, settings(eval_prompts, eval_seeds, objective.name, strength, steps), cache=cache
        )

    report: dict = {"model": model, "steps": steps, "search_steps": search_steps, "cfg": cfg, "pag_scale": args.pag_scale,
                    "search_pairs": len(search_prompts) * len(seeds), "eval_pairs": len(eval_prompts) * len(eval_seeds)}  # fmt: skip

    # 1. Target objective: head map + greedy search on the search pairs; compare on the evaluation pairs.
    quality = get_objective(args.objective)
    short = args.objective.removeprefix("toy-")
    search = HeadSearch(pipe, quality, settings(search_prompts, seeds, quality.name), cache=cache)
    t0 = time.perf_counter()
    head_map = search.head_map()
    sweep_seconds = time.perf_counter() - t0
    heatmap(head_map, search.baseline, out_dir / "headhunter_toy_headmap.png")
    history = search.greedy(
        args.k, args.rounds, pool=sorted(head_map, key=lambda h: -head_map[h])[: 4 * args.k]
    )
    best_round = max(history, key=lambda r: r["score"])  # on the search pairs; the eval pairs stay unseen
    found = [tuple(h) for h in best_round["selected"]]
    layer_scores = search.layer_scores()
    best_layer = max(layer_scores, key=layer_scores.get)

    ev = evaluator(args.objective)
    n_heads = len(ev.heads_per_layer)
    all_heads = ev.all_heads()
    rng = random.Random(0)
    random_sets = [tuple(sorted(rng.sample(all_heads, len(found)))) for _ in range(args.random_sets)]
    layer_cand = tuple((best_layer, h) for h in range(ev.heads_per_layer[best_layer]))
    scores = ev.evaluate([tuple(sorted(found)), layer_cand, *random_sets])
    per_pair = ev.per_pair([tuple(sorted(found)), layer_cand, ()])
    report["target"] = {
        "objective": args.objective,
        "unguided": ev.baseline,
        "searched": scores[tuple(sorted(found))],
        "searched_heads": label(tuple(sorted(found))),
        "best_layer": best_layer,
        "best_layer_pag": scores[layer_cand],
        "random_mean": float(np.mean([scores[c] for c in random_sets])),
        "random_std": float(np.std([scores[c] for c in random_sets])),
        "per_seed": {name: [float(np.mean([v for i, v in enumerate(per_pair[c]) if i % len(eval_seeds) == s]))
                            for s in range(len(eval_seeds))]
                     for name, c in (("searched", tuple(sorted(found))), ("best_layer_pag", layer_cand),
                                     ("unguided", ()))},
        "search_history": history,
        "layers_on_search_pairs": {f"L{k}": v for k, v in layer_scores.items()},
    }  # fmt: skip
    preset(found, settings(search_prompts, seeds, quality.name), 1.0, report["target"], short).save(
        presets / f"toy-sd3-{short}.json"
    )

    # 3. The effect of u on the found heads.
    report["u_effect"] = {}
    for u in (0.25, 0.5, 0.75, 1.0):
        ev_u = evaluator(args.objective, strength=u)
        report["u_effect"][str(u)] = ev_u.evaluate([tuple(sorted(found))])[tuple(sorted(found))]

    # 2. Style: dark background, subject to fidelity dropping at most 0.05 below unguided.
    style = get_objective("toy-dark", "toy-fidelity", 0.05)
    style_search = HeadSearch(pipe, style, settings(search_prompts, seeds, style.name), cache=cache)
    dark_map = style_search.head_map()
    style_history = style_search.greedy(2, 1, pool=sorted(dark_map, key=lambda h: -dark_map[h])[:12])
    dark_heads = tuple(tuple(h) for h in style_history[-1]["selected"])
    dark_ev, fid_ev = evaluator("toy-dark"), evaluator("toy-fidelity")
    report["style_dark"] = {
        "heads": label(dark_heads),
        "darkness_unguided": dark_ev.baseline,
        "darkness_guided": dark_ev.evaluate([dark_heads])[dark_heads],
        "fidelity_unguided": fid_ev.baseline,
        "fidelity_guided": fid_ev.evaluate([dark_heads])[dark_heads],
    }
    preset(
        list(dark_heads), settings(search_prompts, seeds, style.name), 1.0, report["style_dark"], "dark"
    ).save(presets / "toy-sd3-dark.json")

    # 4. Cost per candidate: one candidate per forward pass (its 4 pairs are the batch) vs 8 candidates per
    # forward pass (32 rows), same candidates, pairs and settings, alternated 2 rounds, fastest kept.
    timing: dict[str, float] = {}
    cands = [((layer, h),) for layer, h in all_heads[:8]]
    pairs_prompts, pairs_seeds = search_prompts[:2], seeds[:2] if len(seeds) >= 2 else [0, 1]
    n_pairs = len(pairs_prompts) * len(pairs_seeds)
    for _ in range(2):
        for name, batch in (("one_candidate_per_forward", n_pairs), ("batched", n_pairs * len(cands))):
            timed = HeadSearch(
                pipe, quality, settings(pairs_prompts, pairs_seeds, f"timing-{batch}"), progress=False
            )
            timed.settings.batch = batch
            t0 = time.perf_counter()
            timed.evaluate(cands)
            timing[name] = min(timing.get(name, math.inf), (time.perf_counter() - t0) / len(cands))
    report["seconds_per_candidate"] = timing
    report["sweep_seconds"] = sweep_seconds
    report["layers"] = n_heads
    report["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    q = report["target"]
    print(
        f"toy-sd3, {steps} steps, CFG {cfg}, w {args.pag_scale}; eval {report['eval_pairs']} pairs; {report['machine']}"
    )
    print(f"{args.objective + ' (eval pairs)':<40}{'score':>8}")
    print(f"{'unguided':<40}{q['unguided']:>8.4f}")
    print(f"{'searched ' + q['searched_heads']:<40}{q['searched']:>8.4f}")
    print(f"{'best layer PAG (L' + str(best_layer) + ', all heads)':<40}{q['best_layer_pag']:>8.4f}")
    print(
        f"{'random sets (mean ± std, n=' + str(args.random_sets) + ')':<40}{q['random_mean']:>8.4f} ± {q['random_std']:.4f}"
    )
    print("u effect:", {k: round(v, 4) for k, v in report["u_effect"].items()})
    s = report["style_dark"]
    print(f"dark heads {s['heads']}: darkness {s['darkness_unguided']:.3f} -> {s['darkness_guided']:.3f}, "
          f"fidelity {s['fidelity_unguided']:.3f} -> {s['fidelity_guided']:.3f}")  # fmt: skip
    print("seconds per candidate:", {k: round(v, 3) for k, v in timing.items()})


if __name__ == "__main__":
    main()
