"""Why does head guidance help the toy SD1.5 and not the toy SD3? A sweep of w, u, the identity mode, the timestep
window and CFG over whole layers and single heads, plus a diagnosis of where the unguided model fails.

    python benchmarks/toy_guidance_sweep.py --model assets/toy-sd3 --grids layers identity \\
        --prompts 80 --seeds 2 --scene-seed 101 --out results/toyworld/sweep-sd3.json
    python benchmarks/toy_guidance_sweep.py --model assets/toy-sd3 --configs "layer=1,identity=image" \\
        --prompts 400 --seeds 2 --scene-seed 202 --out results/toyworld/confirm-sd3.json
    python benchmarks/toy_guidance_sweep.py --model assets/toy-sd3 --trajectory 100 --out ...

Prompts are two-object (`--objects`: 1-3) held-in scenes without style words (the setting of the evidence
review and of benchmarks/headhunter_heldout.py), `--prompts` x `--seeds` prompt-seed pairs from scene seed `--scene-seed`; a
screening run and a confirmation run use different scene seeds, so the confirmation pairs are disjoint from the
ones the configurations were picked on. Every guided configuration is paired with the unguided images (same CFG)
of the same pairs: mean difference with a 95% bootstrap interval (`guidance.stats`), `*` where it excludes 0.

A configuration is a comma list of `key=value`: `layer=3` (all heads of layer 3) or `heads=L1H0+L7H7`, `w=1`
(pag_scale), `u=1` (pag_strength), `identity=joint|image`, `window=0:0.3` (pag_start:pag_stop), `every=2`
(pag_every), `branch=uncond` (pag_branch; takes no `w`: that branch has no weight of its own), `cfg=3` (CFG:
`true_cfg_scale` for a model that samples with true CFG, the toy FLUX; default: the model's recommended CFG). A
configuration without a layer or heads is unguided at its CFG (`cfg=1`): it is compared with the unguided images
at the model's recommended CFG of the same pairs.
Grids (`--grids`) expand to configurations over every layer of the model: layers (w 1, u 1), identity (image),
scale (w 0.5 and 3), strength (u 0.25 and 0.5), window (first 30% / last 70% of steps), cfg1 (CFG 1, w 1),
heads:<layer> (each head of one layer alone, w 1).

`--trajectory N`: for N unguided pairs, the prediction of the clean image at every step (x0 from the model output
that reaches `scheduler.step`), decoded and scored; reports per step the mean binding / fully-correct / object
count and how often the step's outcome already equals the final one: when the model's errors are decided.

Per-pair values are stored, and a run resumes: configurations already in `--out` for the same pairs are skipped.
Writes `--out` (with the machine) and prints the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("score", "binding", "correct", "presence", "count", "dark_background", "quality")
DEFAULT_CFG = 3.0  # where the model folder recommends none


def cfg_keyword(call: dict) -> str:
    """The call argument that is CFG for this model: `true_cfg_scale` where the model samples with true CFG (the
    toy FLUX, not guidance-distilled: its `guidance_scale` does nothing), else `guidance_scale`."""
    return "true_cfg_scale" if "true_cfg_scale" in call else "guidance_scale"


def parse_config(text: str, default_cfg: float = DEFAULT_CFG) -> dict:
    """`layer=3,w=1,u=0.5,identity=image,window=0:0.3,every=2,branch=uncond,cfg=1` -> a normalised dict (see the
    module doc)."""
    config = {"w": 1.0, "u": 1.0, "identity": "joint", "window": (0.0, 1.0), "cfg": default_cfg, "every": 1,
              "branch": "cond"}  # fmt: skip
    given = set()
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        given.add(key)
        if key == "layer":
            config["layer"] = int(value)
        elif key == "heads":
            config["heads"] = value.replace("+", ",")
        elif key in ("w", "u", "cfg"):
            config[key] = float(value)
        elif key == "identity":
            if value not in ("joint", "image"):
                raise SystemExit(f"--configs: identity={value!r}; allowed: joint, image")
            config[key] = value
        elif key == "window":
            start, _, stop = value.partition(":")
            config[key] = (float(start), float(stop))
        elif key == "every":
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"--configs: every={value!r}; allowed: a whole number >= 1")
            config[key] = int(value)
        elif key == "branch":
            if value not in ("cond", "uncond"):
                raise SystemExit(f"--configs: branch={value!r}; allowed: cond, uncond")
            config[key] = value
        else:
            raise SystemExit(
                f"--configs: unknown key {key!r} in {text!r}; allowed: layer heads w u identity window every "
                "branch cfg"
            )
    if config["branch"] == "uncond" and "w" in given:
        raise SystemExit(f"--configs: {text!r}: branch=uncond takes no w (CFG's scale sets its push)")
    return config


def config_name(config: dict, default_cfg: float = DEFAULT_CFG) -> str:
    """A stable, readable key: the target, then only the settings that differ from the defaults."""
    parts = [f"L{config['layer']}" if "layer" in config else config.get("heads", "unguided")]
    if config.get("w", 1.0) != 1.0:
        parts.append(f"w{config['w']:g}")
    if config.get("u", 1.0) != 1.0:
        parts.append(f"u{config['u']:g}")
    if config.get("identity", "joint") != "joint":
        parts.append(config["identity"])
    if tuple(config.get("window", (0.0, 1.0))) != (0.0, 1.0):
        parts.append("steps{:g}-{:g}".format(*config["window"]))
    if config.get("every", 1) != 1:
        parts.append(f"every{config['every']}")
    if config.get("branch", "cond") != "cond":
        parts.append(config["branch"])
    if config.get("cfg", default_cfg) != default_cfg:
        parts.append(f"cfg{config['cfg']:g}")
    return " ".join(parts)


def grid(name: str, layout, default_cfg: float = DEFAULT_CFG) -> list[dict]:
    """The configurations of one named grid over every layer of `layout`."""
    parse = functools.partial(parse_config, default_cfg=default_cfg)
    layers = sorted({site.layer for site in layout.sites.values()})
    base = [{"layer": layer} for layer in layers]
    if name == "layers":
        return [parse(f"layer={b['layer']}") for b in base]
    if name == "identity":
        return [parse(f"layer={b['layer']},identity=image") for b in base]
    if name == "scale":
        return [parse(f"layer={b['layer']},w={w}") for w in (0.5, 3) for b in base]
    if name == "strength":
        return [parse(f"layer={b['layer']},u={u}") for u in (0.25, 0.5) for b in base]
    if name == "window":
        return [parse(f"layer={b['layer']},window={s}") for s in ("0:0.3", "0.3:1") for b in base]
    if name == "cfg1":
        return [parse(f"layer={b['layer']},cfg=1") for b in base]
    if name.startswith("heads:"):
        layer = int(name.split(":", 1)[1])
        site = next(s for s in layout.sites.values() if s.layer == layer)
        return [parse(f"heads=L{layer}H{h}") for h in range(site.heads)]
    raise SystemExit(
        f"--grids: unknown grid {name!r}; allowed: layers identity scale strength window cfg1 heads:N"
    )


def pag_arguments(config: dict, layout) -> dict:
    """The pipeline's pag_* keywords for a configuration (empty for unguided)."""
    if "layer" in config:
        site = next(s for s in layout.sites.values() if s.layer == config["layer"])
        heads = [(config["layer"], h) for h in range(site.heads)]
    elif "heads" in config:
        heads = config["heads"]
    else:
        return {}
    start, stop = config["window"]
    arguments = {"pag_heads": heads, "pag_scale": config["w"], "pag_strength": config["u"]}
    if start != 0.0 or stop != 1.0:
        arguments.update(pag_start=start, pag_stop=stop)
    if config["identity"] != "joint":
        arguments["pag_identity"] = config["identity"]
    if config.get("every", 1) != 1:
        arguments["pag_every"] = config["every"]
    if config.get("branch", "cond") != "cond":
        arguments["pag_branch"] = config["branch"]
        del arguments["pag_scale"]
    return arguments


def run_config(pipe, call: dict, pairs: list, arguments: dict, cfg: float, batch: int) -> dict:
    """Evaluator metrics (and darkness) per prompt-seed pair for one configuration."""
    import torch

    from guidance.objectives import darkness
    from toyworld.evaluator import evaluate

    values: dict = {m: [] for m in (*METRICS, "darkness")}
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        generators = [torch.Generator().manual_seed(seed) for _, _, seed in chunk]
        images = pipe(
            [c for c, _, _ in chunk],
            generator=generators,
            **dict(call, **{cfg_keyword(call): cfg}),
            **arguments,
        ).images
        for image, (_, scene, _) in zip(images, chunk, strict=True):
            result = evaluate(image, scene)
            for m in METRICS:
                values[m].append(float(result[m] or 0.0))
            values["darkness"].append(float(darkness(image)))
    return values


def cells(row: dict, shown: tuple[str, ...]) -> str:
    """One printed table row: mean [interval] per metric, `*` where the interval excludes 0."""
    return "".join(
        f"{r['mean']:>+9.3f} [{r['low']:+.3f},{r['high']:+.3f}]{'*' if r['significant'] else ' '}"
        for r in (row[m] for m in shown if m in row)
    )


def import_rows(report: dict, heldout: dict, pairs: int, cfg: float) -> None:
    """Copy a headhunter_heldout.py evaluation's per-pair rows (same pairs, same CFG) into the report, named as
    this sweep names them: 'unguided' -> 'unguided cfg<CFG>', 'searched L2H4,L3H4' -> 'L2H4,L3H4' (w 1, u 1)."""
    evaluation = heldout["evaluation"]
    if evaluation["pairs"] != pairs or float(heldout["call"]["guidance_scale"]) != cfg:
        raise SystemExit(
            f"--import-rows: {evaluation['pairs']} pairs at CFG {heldout['call']['guidance_scale']}, not "
            f"{pairs} at CFG {cfg:g}"
        )
    for name, values in evaluation["values"].items():
        if name == "unguided":
            ours = f"unguided cfg{cfg:g}"
        elif name.startswith("searched "):
            ours = config_name(
                parse_config("heads=" + name.removeprefix("searched ").replace(",", "+"), cfg), cfg
            )
        else:
            continue
        report["values"].setdefault(ours, values)
        report["configs"].setdefault(ours, {"cfg": cfg, "imported": name})


def trajectory(pipe, call: dict, pairs: list, batch: int) -> dict:
    """Score the predicted clean image at every step of unguided sampling (see the module doc)."""
    import numpy as np
    import torch

    from toyworld.evaluator import evaluate

    scheduler = pipe.scheduler
    flow = "FlowMatch" in type(scheduler).__name__
    steps = call["num_inference_steps"]
    per_step = {m: [[] for _ in range(steps)] for m in ("binding", "correct", "n_detected", "score")}
    agree = {m: [[] for _ in range(steps)] for m in ("binding", "correct")}
    original, predicted = scheduler.step, []

    def step(model_output, timestep, sample, *args, **kwargs):
        if flow:  # x_t = (1 - s) x0 + s eps, the model predicts eps - x0
            sigma = (timestep.float() / scheduler.config.num_train_timesteps).reshape(-1, 1, 1, 1)
            predicted.append(sample - sigma * model_output)
        else:  # DDIM's alphas
            alpha = scheduler.alphas_cumprod[int(timestep)].to(sample.dtype)
            if scheduler.config.prediction_type == "v_prediction":
                predicted.append(alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output)
            else:
                predicted.append((sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt())
        return original(model_output, timestep, sample, *args, **kwargs)

    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        predicted.clear()
        scheduler.step = step
        try:
            generators = [torch.Generator().manual_seed(seed) for _, _, seed in chunk]
            pipe([c for c, _, _ in chunk], generator=generators, **call)
        finally:
            del scheduler.step
        vae = pipe.vae
        results = []
        for latents in predicted:
            scaled = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
            with torch.no_grad():
                images = pipe.image_processor.postprocess(vae.decode(scaled).sample, output_type="pil")
            results.append(
                [evaluate(image, scene) for image, (_, scene, _) in zip(images, chunk, strict=True)]
            )
        final = results[-1]
        for i, row in enumerate(results):
            for m in per_step:
                per_step[m][i].extend(float(r[m] or 0.0) for r in row)
            for m in agree:
                agree[m][i].extend(
                    float((r[m] or 0.0) == (f[m] or 0.0)) for r, f in zip(row, final, strict=True)
                )
    return {
        "pairs": len(pairs),
        "mean": {m: [float(np.mean(v)) for v in per_step[m]] for m in per_step},
        "agrees_with_final": {m: [float(np.mean(v)) for v in agree[m]] for m in agree},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/toy-sd3")
    parser.add_argument("--prompts", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--scene-seed", type=int, default=101)
    parser.add_argument("--objects", type=int, default=2, choices=(1, 2, 3), help="objects per prompt")
    parser.add_argument("--grids", nargs="*", default=[])
    parser.add_argument("--configs", nargs="*", default=[])
    parser.add_argument(
        "--trajectory", type=int, default=0, help="pairs for the per-step diagnosis (0: none)"
    )
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the unguided rows (a second process; `--merge` its output into the first's)",
    )
    parser.add_argument(
        "--merge",
        nargs="*",
        default=[],
        help="outputs of other runs on the same pairs whose rows to copy into --out",
    )
    parser.add_argument(
        "--exclude",
        default=None,
        metavar="SEED:N",
        help="leave out the captions of the first N distinct prompts of scene seed SEED (a search's; "
        "benchmarks/headhunter_heldout.py evaluates on --scene-seed 23 --prompts 400 --exclude 11:64)",
    )
    parser.add_argument(
        "--import-rows",
        default=None,
        help="a benchmarks/headhunter_heldout.py output on the same pairs: its per-pair rows ('unguided', "
        "'searched ...') are copied in (score, binding, correct), so that only new rows are generated",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from guidance.adapters import heads_layout
    from guidance.stats import paired_difference
    from guidance.swap import denoiser_of
    from pipelines import HeadHunterPipeline
    from tools.settings import recommended_call
    from toyworld.scenes import distinct_captions

    pipe = HeadHunterPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    call = recommended_call(args.model, guidance_scale=DEFAULT_CFG)
    default_cfg = float(call[cfg_keyword(call)])  # the unguided baseline: the model's recommended CFG
    layout = heads_layout(denoiser_of(pipe))
    excluded = set()
    if args.exclude:
        seed, _, count = args.exclude.partition(":")
        excluded = {c for c, _ in distinct_captions(int(count), int(seed), n_objects=args.objects)}
    items = distinct_captions(args.prompts, args.scene_seed, n_objects=args.objects, exclude=excluded)
    pairs = [(caption, scene, seed) for caption, scene in items for seed in range(args.seeds)]

    out = Path(args.out)
    key = {"model": args.model, "prompts": args.prompts, "seeds": args.seeds, "scene_seed": args.scene_seed}
    if args.objects != 2:  # two-object runs keep the key of the files written before --objects existed
        key["objects"] = args.objects
    if args.exclude:
        key["exclude"] = args.exclude
    report = json.loads(out.read_text()) if out.exists() else {}
    if {k: report.get(k) for k in key} != key:
        report = dict(key, configs={}, values={})
    report.update(call=call, machine={
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads()})  # fmt: skip

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out)

    if args.trajectory:
        t0 = time.perf_counter()
        report["trajectory"] = trajectory(pipe, call, pairs[: args.trajectory], args.batch)
        report["trajectory"]["seconds"] = time.perf_counter() - t0
        save()
        traj = report["trajectory"]
        print(f"\nper-step prediction of the clean image, {traj['pairs']} unguided pairs")
        print(
            f"{'step':>5}{'binding':>9}{'correct':>9}{'objects':>9}{'= final binding':>17}{'= final correct':>17}"
        )
        for i in range(len(traj["mean"]["binding"])):
            print(f"{i:>5}{traj['mean']['binding'][i]:>9.3f}{traj['mean']['correct'][i]:>9.3f}"
                  f"{traj['mean']['n_detected'][i]:>9.2f}{traj['agrees_with_final']['binding'][i]:>17.3f}"
                  f"{traj['agrees_with_final']['correct'][i]:>17.3f}")  # fmt: skip

    for other in map(Path, args.merge):
        data = json.loads(other.read_text())
        if {k: data.get(k) for k in key} != key:
            raise SystemExit(f"--merge {other}: other pairs ({ {k: data.get(k) for k in key} }), not {key}")
        for name, values in data["values"].items():
            report["values"].setdefault(name, values)
            report["configs"].setdefault(name, data["configs"][name])
    if args.import_rows:
        import_rows(report, json.loads(Path(args.import_rows).read_text()), len(pairs), default_cfg)
    configs = [c for g in args.grids for c in grid(g, layout, default_cfg)]
    configs += [parse_config(c, default_cfg) for c in args.configs]
    cfgs = {c["cfg"] for c in configs}
    if any("layer" not in c and "heads" not in c for c in configs):  # unguided at another CFG: vs the default
        cfgs.add(default_cfg)
    cfgs = sorted(cfgs)
    baselines = (
        [] if args.no_baseline else [parse_config(f"cfg={c}", default_cfg) | {"unguided": True} for c in cfgs]
    )
    wanted = baselines + configs
    for config in wanted:
        name = (
            f"unguided cfg{config['cfg']:g}" if config.get("unguided") else config_name(config, default_cfg)
        )
        if name in report["values"]:
            continue
        t0 = time.perf_counter()
        arguments = {} if config.get("unguided") else pag_arguments(config, layout)
        report["values"][name] = run_config(pipe, call, pairs, arguments, config["cfg"], args.batch)
        report["configs"][name] = {"cfg": config["cfg"], "arguments": {k: str(v) for k, v in arguments.items()},
                                   "seconds": time.perf_counter() - t0}  # fmt: skip
        save()
        print(f"done {name} ({time.perf_counter() - t0:.0f} s)", flush=True)

    baselines = {n: v for n, v in report["values"].items() if n.startswith("unguided")}
    for name, baseline in baselines.items():
        print(f"\n{name}, {len(pairs)} pairs: " + ", ".join(
            f"{m} {sum(v) / len(v):.3f}" for m, v in baseline.items()))  # fmt: skip
    table = {}
    shown = ("score", "binding", "correct", "darkness")
    print(f"\n{'configuration':<28}" + "".join(f"{m:>27}" for m in shown))
    for name, values in report["values"].items():
        if name in baselines:
            continue
        cfg = report["configs"][name]["cfg"]
        baseline = baselines.get(f"unguided cfg{cfg:g}")
        if baseline is None:
            print(f"{name:<28}(no unguided row at CFG {cfg:g} yet)")
            continue
        table[name] = {m: paired_difference(values[m], baseline[m]) for m in values if m in baseline}
        print(f"{name:<28}{cells(table[name], shown)}")
    default = baselines.get(f"unguided cfg{default_cfg:g}")
    for name, values in baselines.items():  # unguided at another CFG against the default CFG, same pairs
        if default is not None and values is not default:
            table[f"{name} vs cfg{default_cfg:g}"] = {
                m: paired_difference(values[m], default[m]) for m in values if m in default
            }
            print(
                f"{name + ' - cfg' + format(default_cfg, 'g'):<28}{cells(table[f'{name} vs cfg{default_cfg:g}'], shown)}"
            )
    report["differences_vs_unguided"] = table
    save()
    print(out)


if __name__ == "__main__":
    main()
