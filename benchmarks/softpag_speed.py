"""Step time and peak memory of SoftPAG against the family's plain sampling (CFG, or none for guidance-distilled
models), per model family; the generic adapter next to the hand-written one where both exist (SD3, FLUX.1), and
diffusers' StableDiffusion3PAGPipeline on SD3.

A mid-size random model of the family (no download); the perturbed layer sits at half depth, all its heads.
Each variant runs in its own subprocess so its peak resident memory (ru_maxrss) is its own; each subprocess times
`--steps` denoising steps after one warm-up call; variants run round-robin `--rounds` times and the fastest round
of each counts. Prints a table and writes JSON to results/softpag_speed.json (SD3) or
results/softpag_speed_<family>.json.

    python benchmarks/softpag_speed.py [--family sd3] [--steps 8] [--layers 12] [--size 128]

The cheaper variants of issue 28 (SD3): `every<k>` (pag_every=k), `window0-0.3` (pag_stop=0.3), `uncond`
(pag_branch="uncond"), `uncond-every2`, next to CFG and diffusers' PAG, on the random model or a model folder:

    python benchmarks/softpag_speed.py --variants cost --steps 12 --out results/softpag_speed_cost.json
    python benchmarks/softpag_speed.py --variants cost --model assets/toy-sd3 --size 64 --steps 12 \
        --out results/softpag_speed_cost_toy-sd3.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Per family: the baseline first, then the SoftPAG variants. "generic" = the generic attention adapter.
VARIANTS = {
    "sd3": ("cfg", "cfg+softpag", "cfg+softpag-joint", "cfg+softpag-no-prefix", "cfg+softpag-generic",
            "cfg+diffusers-pag", "cfg+softpag-every2", "cfg+softpag-every3", "cfg+softpag-every4",
            "cfg+softpag-window0-0.3", "cfg+softpag-uncond", "cfg+softpag-uncond-every2"),
    "flux": ("plain", "softpag", "softpag-no-prefix", "softpag-generic"),
    "flux2": ("plain", "softpag-generic"),
    "qwenimage": ("cfg", "cfg+softpag-generic"),
    "zimage": ("cfg", "cfg+softpag-generic"),
    "chroma": ("cfg", "cfg+softpag-generic"),
    "wan": ("cfg", "cfg+softpag-generic"),
}  # fmt: skip
# `--variants cost`: the cheaper SoftPAG settings of issue 28 beside every-step SoftPAG, CFG and diffusers' PAG.
COST_VARIANTS = (
    "cfg",
    "cfg+softpag",
    "cfg+softpag-every2",
    "cfg+softpag-every3",
    "cfg+softpag-every4",
    "cfg+softpag-window0-0.3",
    "cfg+softpag-uncond",
    "cfg+softpag-uncond-every2",
    "cfg+diffusers-pag",
)
HEADS, HEAD_DIM = 8, 16  # head_dim 16: the tiny builders' RoPE axes sum to 16

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # fixtures/: a checkout's tiny pipelines


def build(family: str, folder: Path, layers: int) -> None:
    """Save a mid-size random pipeline of `family`: 8 heads x 16 dims per attention, `layers` layers in all."""
    from fixtures.tiny import tiny_flux, tiny_sd3
    from fixtures.tiny_families import tiny_chroma, tiny_flux2, tiny_qwenimage, tiny_wan, tiny_zimage

    double, single = layers // 3, layers - layers // 3
    builders = {
        "sd3": lambda: tiny_sd3(num_layers=layers, num_heads=HEADS, head_dim=HEAD_DIM),
        "flux": lambda: tiny_flux(num_layers=double, num_single_layers=single, num_heads=HEADS, head_dim=HEAD_DIM),
        "flux2": lambda: tiny_flux2(num_layers=double, num_single_layers=single, num_heads=HEADS, head_dim=HEAD_DIM),
        "qwenimage": lambda: tiny_qwenimage(num_layers=layers, num_heads=HEADS, head_dim=HEAD_DIM),
        "zimage": lambda: tiny_zimage(num_layers=layers, num_heads=HEADS, dim=HEADS * HEAD_DIM),
        "chroma": lambda: tiny_chroma(num_layers=double, num_single_layers=single, num_heads=HEADS,
                                      head_dim=HEAD_DIM),
        "wan": lambda: tiny_wan(num_layers=layers, num_heads=HEADS, head_dim=HEAD_DIM),
    }  # fmt: skip
    builders[family]().save_pretrained(folder)


def _generic_pipeline(family: str, folder: str):
    """SD3 / FLUX.1 through the generic adapter instead of their hand-written processors."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from pipelines.families import GenericSoftPAGMixin
    from pipelines.headhunter import SoftPAGMixin

    class GenericSD3(GenericSoftPAGMixin, StableDiffusion3Pipeline):
        _cond_rows = SoftPAGMixin._cond_rows  # batched [uncond, cond]

    class GenericFlux(GenericSoftPAGMixin, FluxPipeline):
        pass

    cls = GenericSD3 if family == "sd3" else GenericFlux
    extra = dict(text_encoder_3=None, tokenizer_3=None) if family == "sd3" else {}
    return cls.from_pretrained(folder, **extra)


def _call_inputs(family: str, size: int) -> dict:
    """Prompt (or precomputed embeddings), size and CFG of one call of `family`."""
    from fixtures.tiny_families import prompt_embeds_for

    inputs: dict = dict(height=size, width=size, output_type="latent")
    if family in ("flux2", "qwenimage", "zimage"):
        inputs.update(prompt_embeds_for(family))
        negative = prompt_embeds_for(family, seed=1)
        if family == "qwenimage":
            inputs.update(true_cfg_scale=5.0, negative_prompt_embeds=negative["prompt_embeds"],
                          negative_prompt_embeds_mask=negative["prompt_embeds_mask"])  # fmt: skip
        if family == "zimage":
            inputs.update(guidance_scale=5.0, negative_prompt_embeds=negative["prompt_embeds"])
    else:
        inputs.update(prompt="a red circle", guidance_scale=5.0)
    if family in ("chroma", "wan"):
        inputs.update(negative_prompt="dark", max_sequence_length=16)
    if family == "wan":
        inputs.update(num_frames=5)
    return inputs


def cheaper(variant: str) -> dict:
    """The pag_every / pag_stop / pag_branch keywords a cost variant adds (`...-every2`, `-window0-0.3`, `-uncond`)."""
    extra: dict = {}
    for part in variant.removeprefix("cfg+softpag").split("-"):
        if part.startswith("every"):
            extra["pag_every"] = int(part.removeprefix("every"))
        elif part.startswith("window"):
            extra["pag_start"] = float(part.removeprefix("window"))
        elif part.startswith("0."):  # the stop of `window0-0.3`
            extra["pag_stop"] = float(part)
        elif part == "uncond":
            extra["pag_branch"] = "uncond"
    return extra


def worker(family: str, variant: str, folder: str, layers: int, size: int, steps: int, threads: int) -> dict:
    """Time one variant; returns seconds per step and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    split = layers // 2
    heads_per_layer = json.loads((Path(folder) / "transformer" / "config.json").read_text())[
        "num_attention_heads"
    ]
    heads = ",".join(f"L{split}H{h}" for h in range(heads_per_layer))
    identity = (
        "image" if family == "sd3" and not variant.endswith("joint") else "joint"
    )  # diffusers' PAG: image
    extra = dict(pag_heads=heads, pag_scale=3.0, pag_identity=identity)
    if variant == "cfg+diffusers-pag":
        from diffusers import StableDiffusion3PAGPipeline

        pipe = StableDiffusion3PAGPipeline.from_pretrained(
            folder, text_encoder_3=None, tokenizer_3=None,
            pag_applied_layers=[rf"^transformer_blocks\.{split}\.attn$"],
        )  # fmt: skip
        extra = dict(pag_scale=3.0, pag_adaptive_scale=0.0)
    elif variant.endswith("generic") and family in ("sd3", "flux"):
        pipe = _generic_pipeline(family, folder)
    else:
        from pipelines.headhunter import HeadHunterPipeline

        pipe = HeadHunterPipeline.from_pretrained(folder)
    if variant in ("cfg", "plain"):
        extra = {}
    if variant.endswith("no-prefix"):
        extra["pag_shared_prefix"] = False
    extra.update(cheaper(variant))
    if extra.get("pag_branch") == "uncond":
        del extra["pag_scale"]  # that branch has no weight of its own (CFG's scale sets its push)
    pipe.set_progress_bar_config(disable=True)
    inputs = _call_inputs(family, size)
    toy = Path(folder) / "toyworld.json"  # a toy model folder: its recommended text length
    if toy.is_file() and "max_sequence_length" in json.loads(toy.read_text()):
        inputs["max_sequence_length"] = json.loads(toy.read_text())["max_sequence_length"]

    def run(n: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        pipe(num_inference_steps=n, generator=torch.Generator().manual_seed(0), **inputs, **extra)
        return time.perf_counter() - start, time.process_time() - cpu

    run(1)  # warm-up
    seconds, cpu = run(steps)
    return {
        "variant": variant,
        "seconds_per_step": seconds / steps,
        "cpu_seconds_per_step": cpu
        / steps,  # this process's CPU time: robust to other load on a shared machine
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _measure(args, folder: str) -> list[dict]:
    """Round-robin over the variants, keeping each one's fastest round: load from other processes on the machine
    then slows every variant alike instead of whichever happened to run during it."""
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for variant in args.variant_list:
            cmd = [sys.executable, __file__, "--worker", variant, "--folder", folder, "--family", args.family,
                   "--layers", str(args.layers), "--size", str(args.size), "--steps", str(args.steps),
                   "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            if variant not in best or row[args.rank_by] < best[variant][args.rank_by]:
                best[variant] = row
    rows = [best[v] for v in args.variant_list]
    for row in rows:
        row["time_vs_base"] = row["seconds_per_step"] / rows[0]["seconds_per_step"]
        row["cpu_vs_base"] = row["cpu_seconds_per_step"] / rows[0]["cpu_seconds_per_step"]
        row["rss_vs_base"] = row["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(VARIANTS), default="sd3")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--size", type=int, default=128, help="image size (pixels)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (1 is robust to a busy CPU)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repeats; the fastest round counts")
    parser.add_argument(
        "--out", default=None, help="JSON path (default results/softpag_speed[_<family>].json)"
    )
    parser.add_argument(
        "--variants", nargs="*", default=None, help="variants to run ('cost': the issue-28 set); default: all"
    )
    parser.add_argument("--model", default=None, help="an SD3 model folder instead of the random model")
    parser.add_argument(
        "--rank-by",
        choices=("seconds_per_step", "cpu_seconds_per_step"),
        default="seconds_per_step",
        help="which time picks each variant's best round (CPU time where other processes load the machine)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        row = worker(args.family, args.worker, args.folder, args.layers, args.size, args.steps, args.threads)
        print(json.dumps(row))
        return
    args.out = args.out or ("results/softpag_speed.json" if args.family == "sd3" else
                            f"results/softpag_speed_{args.family}.json")  # fmt: skip
    wanted = args.variants or list(VARIANTS[args.family])
    args.variant_list = list(COST_VARIANTS) if wanted == ["cost"] else wanted
    unknown = [v for v in args.variant_list if v not in VARIANTS[args.family]]
    if unknown:
        raise SystemExit(
            f"--variants {unknown}: not variants of {args.family}; allowed: {VARIANTS[args.family]}"
        )
    if args.model:
        args.layers = json.loads((Path(args.model) / "transformer" / "config.json").read_text())["num_layers"]
        rows = _measure(args, args.model)
    else:
        with tempfile.TemporaryDirectory() as folder:
            build(args.family, Path(folder), args.layers)
            rows = _measure(args, folder)
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch threads {args.threads}".strip()
    base = VARIANTS[args.family][0]
    model = args.model or f"{args.family} random: {args.layers} layers x {HEADS} heads x {HEAD_DIM} dims"
    print(f"{model}, {args.size} px, {args.steps} steps, perturbed layer {args.layers // 2} (all heads), batch 1; "
          f"{machine}")  # fmt: skip
    print(f"{'variant':<28}{'s/step':>10}{'x ' + base:>8}{'CPU s/step':>12}{'x ' + base:>8}{'peak RSS MiB':>14}"
          f"{'x ' + base:>8}")  # fmt: skip
    for r in rows:
        print(f"{r['variant']:<28}{r['seconds_per_step']:>10.3f}{r['time_vs_base']:>8.2f}"
              f"{r['cpu_seconds_per_step']:>12.3f}{r['cpu_vs_base']:>8.2f}"
              f"{r['peak_rss_mib']:>14.0f}{r['rss_vs_base']:>8.2f}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"family": args.family, "machine": machine, "args": vars(args), "rows": rows}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
