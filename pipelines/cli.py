"""The `headhunter` command line: generate with SoftPAG heads, list and show head presets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guidance.config import SOFTPAG_SETTINGS, Setting
from guidance.heads import HeadSelection, HeadSelectionError
from pipelines.settings import (
    DEFAULT_MODEL,
    DTYPES,
    list_presets,
    model_call_extras,
    png_parameters,
    recommended_settings,
    resolve_heads,
    save_png,
)

TYPES = {"number": float, "integer": int, "text": str}


def _given(value, default):
    """The flag's value when it was given (0 and negative numbers included), else the default."""
    return default if value is None else value


def add_setting_flags(
    parser: argparse.ArgumentParser, settings: list[Setting], defaults: bool = True
) -> None:
    """One flag per config setting (`--pag-scale`, ...), its default, choices and help taken from the config."""
    for setting in settings:
        kwargs = {"help": setting.help, "dest": setting.name}
        if setting.kind == "choice":
            kwargs["choices"] = setting.choices
        else:
            kwargs["type"] = TYPES[setting.kind]
        if defaults and setting.default is not None:
            kwargs["default"] = setting.default
            kwargs["help"] += f" (default: {setting.default})"
        parser.add_argument(setting.flag, **kwargs)


PAG_FLAGS = [SOFTPAG_SETTINGS[k] for k in ("pag_heads", "pag_scale", "pag_strength", "pag_identity", "pag_start",
                                           "pag_stop")]  # fmt: skip


def _generate(args: argparse.Namespace) -> int:
    import torch

    from pipelines.headhunter import HeadHunterPipeline

    if not args.out.lower().endswith(".png"):
        raise SystemExit(f"--out {args.out!r} must name a .png file")
    defaults = recommended_settings(args.model)
    steps = _given(args.steps, defaults.get("num_inference_steps", 28))
    cfg = _given(args.guidance_scale, defaults.get("guidance_scale", 5.0))
    size = defaults.get("height")
    dtype = getattr(torch, args.dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    heads = resolve_heads(args.pag_heads)
    if heads:
        HeadSelection.parse(heads, "--pag-heads")  # fail before loading a model
    pipe = HeadHunterPipeline.from_pretrained(args.model, dtype=dtype).to(device)
    call = dict(
        model_call_extras(args.model),
        num_inference_steps=steps,
        guidance_scale=cfg,
        height=_given(args.height, size),
        width=_given(args.width, size),
    )
    if args.negative_prompt is not None:
        call["negative_prompt"] = args.negative_prompt
    pag = dict(
        pag_heads=heads, pag_scale=args.pag_scale, pag_strength=args.pag_strength,
        pag_identity=args.pag_identity, pag_start=args.pag_start, pag_stop=args.pag_stop,
    )  # fmt: skip
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    image = pipe(args.prompt, generator=generator, **call, **(pag if heads else {})).images[0]
    settings = {"model": str(args.model), "seed": args.seed, **call, **(pag if heads else {})}
    out = Path(args.out)
    save_png(image, out, png_parameters(args.prompt, args.negative_prompt, settings), settings)
    print(out)
    if args.compare and heads:
        plain = pipe(
            args.prompt, generator=torch.Generator(device="cpu").manual_seed(args.seed), **call
        ).images[0]
        plain_out = out.with_name(out.stem + "-unguided.png")
        base = {"model": str(args.model), "seed": args.seed, **call}
        save_png(plain, plain_out, png_parameters(args.prompt, args.negative_prompt, base), base)
        print(plain_out)
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("headhunter search: give --prompt (repeatable) or --prompts FILE")
    return prompts


def _search(args: argparse.Namespace) -> int:
    """Run a head search and write preset.json, headmap.png (with --sweep) and report.md to --out."""
    import torch

    from guidance.objectives import get_objective
    from guidance.search import HeadSearch, SearchSettings, heatmap, label, preset
    from pipelines.headhunter import HeadHunterPipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    defaults = recommended_settings(args.model)
    objective = get_objective(args.objective, args.guard, args.max_drop)
    settings = SearchSettings(
        prompts=_read_prompts(args), seeds=args.seeds, steps=_given(args.steps, defaults.get("num_inference_steps", 28)),
        size=_given(args.size, defaults.get("height")),
        guidance_scale=_given(args.guidance_scale, defaults.get("guidance_scale", 5.0)),
        pag_scale=args.pag_scale, strength=args.search_strength, identity=args.pag_identity, batch=args.batch,
        model=str(args.model), objective=objective.name, extra=model_call_extras(args.model),
    )  # fmt: skip
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = HeadHunterPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    search = HeadSearch(pipe, objective, settings, cache=out / "cache")
    report = [f"# Head search: {objective.name}", "", f"model `{args.model}`, {len(settings.prompts)} prompts x "
              f"{len(settings.seeds)} seeds, {settings.steps} steps, CFG {settings.guidance_scale}, "
              f"w {settings.pag_scale}, search u {settings.strength}", "", f"unguided: {search.baseline:.4f}"]  # fmt: skip
    scores: dict = {"unguided": search.baseline}
    if args.sweep:
        head_map = search.head_map()
        heatmap(head_map, search.baseline, out / "headmap.png")
        best = sorted(head_map, key=lambda h: -head_map[h])[:10]
        report += ["", "best single heads: " + ", ".join(f"{label((h,))} {head_map[h]:.4f}" for h in best)]
        scores["head_map"] = {label((h,)): v for h, v in head_map.items()}
    if args.layers:
        layers = search.layer_scores()
        report += ["", "layer-level PAG: " + ", ".join(f"L{layer} {v:.4f}" for layer, v in layers.items())]
        scores["layers"] = {f"L{layer}": v for layer, v in layers.items()}
    history = search.greedy(args.k, args.rounds)
    for record in history:
        report.append(f"round {record['round']}: +{', '.join(record['added'])} -> {record['score']:.4f}")
    scores["rounds"] = history
    if search.rank != 0:  # under accelerate launch, rank 0 writes the outputs
        return 0
    selected = history[-1]["selected"]
    preset(selected, settings, args.use_strength, scores, name=args.objective).save(out / "preset.json")
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(out / "preset.json")
    return 0


def _batch(args: argparse.Namespace) -> int:
    """Validate a job file, generate what is not done yet, merge manifests, print a summary."""
    import torch

    from guidance.layouts import layout_of
    from guidance.ranks import barrier
    from guidance.swap import denoiser_of
    from pipelines.batch import FIELDS, BatchRunner, JobFileError, plan, print_problems
    from pipelines.headhunter import HeadHunterPipeline

    recommended = recommended_settings(args.model)
    defaults = {k: v for k, v in recommended.items() if k in FIELDS}
    defaults.update(
        height=recommended.get("height"), width=recommended.get("width", recommended.get("height"))
    )
    if args.config:
        defaults.update(json.loads(Path(args.config).read_text()))
    flags = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, height=args.height,
                 width=args.width, **{s.name: getattr(args, s.name) for s in PAG_FLAGS})  # fmt: skip
    defaults.update({k: v for k, v in flags.items() if v is not None})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = HeadHunterPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    denoiser = denoiser_of(pipe)
    try:
        items, problems = plan(args.jobs, defaults, layout_of(denoiser).heads_per_layer, resolve_heads,
                               args.skip_invalid)  # fmt: skip
    except JobFileError as error:
        print(f"headhunter batch: {error}", file=sys.stderr)
        return 2
    if problems:
        print(f"headhunter batch: skipping {len(problems)} invalid line(s):", file=sys.stderr)
        print_problems(problems)
    runner = BatchRunner(
        pipe, str(args.model), args.out, args.batch_size, resolve_heads, model_call_extras(args.model)
    )
    counts = runner.run(items, progress=not args.quiet)
    if runner.world > 1:
        barrier()
        if runner.rank == 0:
            runner.merge()
    print(f"rank {runner.rank}: {counts['ok']} generated, {counts['done_before']} already done, "
          f"{counts['failed']} failed, {counts['items_per_second']:.2f} items/s")  # fmt: skip
    return 1 if counts["failed"] or problems else 0


def _presets(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, data in list_presets():
            model = data.get("model", "?")
            source = data.get("source", "")[:60]
            heads = sum(len(g["heads"]) for g in data.get("groups", []))
            print(f"{name:<28} {model:<36} {heads:>3} heads  {source}")
        return 0
    path = Path(resolve_heads(args.name) or args.name)
    print(json.dumps(HeadSelection.load(path, "name").to_json(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `headhunter`."""
    parser = argparse.ArgumentParser(prog="headhunter", description="Attention-head guidance for diffusers.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate one image with SoftPAG heads (PNG with parameters)")
    gen.add_argument("prompt")
    gen.add_argument(
        "--model", default=str(DEFAULT_MODEL), help="hub id or folder (default: the toy SD3 model)"
    )
    gen.add_argument("--out", default="outputs/image.png")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, help="default: the model's recommended steps, else 28")
    gen.add_argument(
        "--guidance-scale", type=float, help="CFG scale; default: the model's recommendation, else 5"
    )
    gen.add_argument("--height", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--negative-prompt")
    add_setting_flags(gen, PAG_FLAGS)
    gen.add_argument(
        "--compare", action="store_true", help="also write the unguided image from the same seed"
    )
    gen.add_argument("--device", help="default: cuda if available, else cpu")
    gen.add_argument("--dtype", choices=DTYPES, default="float32")
    gen.set_defaults(func=_generate)

    search = sub.add_parser(
        "search", help="search heads for an objective (preset.json, headmap.png, report.md)"
    )
    search.add_argument("--model", default=str(DEFAULT_MODEL))
    search.add_argument(
        "--objective", default="toy-quality", help="toy-quality, toy-dark, saturation, clip:<model>, ..."
    )
    search.add_argument("--guard", help="keep this objective within --max-drop of the unguided images")
    search.add_argument("--max-drop", type=float, default=0.05)
    search.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    search.add_argument("--prompts", help="a text file, one prompt per line")
    search.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    search.add_argument("--k", type=int, default=4, help="heads added per round")
    search.add_argument("--rounds", type=int, default=1)
    search.add_argument("--sweep", action="store_true", help="also score every head alone (the head map)")
    search.add_argument(
        "--layers", action="store_true", help="also score layer-level PAG (all heads of a layer)"
    )
    search.add_argument("--steps", type=int, help="sampling steps during search (fewer is faster)")
    search.add_argument("--size", type=int, help="image size during search")
    search.add_argument("--guidance-scale", type=float)
    add_setting_flags(search, [SOFTPAG_SETTINGS["pag_scale"], SOFTPAG_SETTINGS["pag_identity"]])
    search.add_argument("--search-strength", type=float, default=1.0, help="u while searching (paper: 1.0)")
    search.add_argument(
        "--use-strength", type=float, default=0.5, help="u written into the preset (paper: ~0.5)"
    )
    search.add_argument("--batch", type=int, default=16, help="images per forward pass")
    search.add_argument("--out", default="outputs/search")
    search.add_argument("--device")
    search.add_argument("--dtype", choices=DTYPES, default="float32")
    search.set_defaults(func=_search)

    batch = sub.add_parser(
        "batch", help="run a JSONL/CSV job file: resumable, one PNG + manifest line per item"
    )
    batch.add_argument("jobs", help="JSONL (one job object per line) or CSV with a header")
    batch.add_argument("--out", required=True)
    batch.add_argument("--model", default=str(DEFAULT_MODEL))
    batch.add_argument("--config", help="a JSON file of defaults for every line")
    batch.add_argument("--batch-size", type=int, default=4, help="images generated together (same settings)")
    batch.add_argument("--skip-invalid", action="store_true", help="run the valid lines, report the others")
    batch.add_argument("--steps", type=int)
    batch.add_argument("--guidance-scale", type=float)
    batch.add_argument("--height", type=int)
    batch.add_argument("--width", type=int)
    add_setting_flags(batch, PAG_FLAGS, defaults=False)  # unset flags leave the job file's values
    batch.add_argument("--device")
    batch.add_argument("--dtype", choices=DTYPES, default="float32")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(func=_batch)

    presets = sub.add_parser("presets", help="list or show head presets")
    presets.add_argument("action", choices=("list", "show"))
    presets.add_argument("name", nargs="?", help="preset name or path (for show)")
    presets.set_defaults(func=_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `headhunter` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) == "show" and not args.name:
        raise SystemExit("headhunter presets show: give a preset name or path")
    try:
        return args.func(args)
    except (HeadSelectionError, ValueError, FileNotFoundError) as error:
        print(f"headhunter: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
