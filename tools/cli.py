"""The `headhunter` command line: generate with SoftPAG heads, search heads, run batch jobs, list and show presets.

Every input that needs no model is checked before a model loads (by the config objects of `guidance.config`);
an error is one line on stderr and exit code 2 (1 for a failure while running); `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from guidance.config import (
    GENERATION_SETTINGS,
    SEARCH_SETTINGS,
    SOFTPAG_SETTINGS,
    STRUCTURED_SETTINGS,
    UPFUSION_SETTINGS,
    GenerationConfig,
    GuidanceError,
    Setting,
    SoftPAGConfig,
)
from guidance.heads import HeadEntry, HeadGroup, HeadSelection, HeadSelectionError, printable, short_repr
from pipelines.loading import ModelFolderError
from tools.console import before_loading, quiet_console
from tools.settings import (
    DEFAULT_MODEL,
    DTYPES,
    UPFUSION_MODEL,
    OutputError,
    check_model,
    check_structured,
    check_writable_folder,
    explicit_over_preset,
    folder_heads_per_layer,
    image_record,
    model_call_extras,
    model_name,
    model_vocabulary,
    output_images,
    pipeline_call,
    png_target,
    read_png_record,
    read_presets,
    recommended_settings,
    record_call,
    record_model,
    record_parameters,
    resolve_heads,
    save_png,
    search_with_true_cfg,
    structured_support,
    with_true_cfg,
)

TYPES = {"number": float, "integer": int, "text": str}
PAG_FLAGS = [SOFTPAG_SETTINGS[k] for k in ("pag_heads", "pag_scale", "pag_strength", "pag_identity", "pag_start",
                                           "pag_stop", "pag_every", "pag_branch")]  # fmt: skip
# Generation settings whose flag is not `--<name>`.
FLAG_NAMES = {"num_inference_steps": "--steps", "prompt": "prompt"}
GENERATION_FLAGS = [
    GENERATION_SETTINGS[k] for k in ("num_inference_steps", "guidance_scale", "height", "width")
]
STRUCTURED = STRUCTURED_SETTINGS["structured"]
# The search's own flags (its steps and CFG are generation's flags: the model's recommended call by default).
SEARCH_FLAGS = [SEARCH_SETTINGS[k] for k in ("k", "rounds", "search_strength", "use_strength", "batch", "max_drop",
                                             "size")]  # fmt: skip
OFF = "off"  # a choice setting's None ("not used") on the command line
MAX_FILE_BYTES = 64 * 1024 * 1024  # job, prompt and config files


class CLIError(ValueError):
    """A command-line input that cannot be used; the message names the flag, the value and what is allowed."""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors raised as CLIError (one line), not printed with the usage."""

    def error(self, message: str):
        raise CLIError(f"{self.prog}: {message}")


def flag_of(setting: Setting) -> str:
    """The command-line flag of a setting (`--pag-scale`, `--steps`)."""
    return FLAG_NAMES.get(setting.name, setting.flag)


def add_setting_flags(
    parser: argparse.ArgumentParser, settings: list[Setting], defaults: bool = True
) -> None:
    """One flag per config setting (`--pag-scale`, ...), its default, choices and help taken from the config."""
    for setting in settings:
        kwargs = {"help": setting.help, "dest": setting.name}
        default = setting.default
        if setting.kind == "choice" and None in setting.choices:  # None is "off" on the command line
            names = [OFF if c is None else c for c in setting.choices]
            kwargs.update(type=lambda text, s=setting: _choice(s, text), metavar="{" + ",".join(names) + "}")
            default = OFF if default is None else default
        elif setting.kind == "choice":
            kwargs["choices"] = setting.choices
        else:
            kwargs["type"] = TYPES[setting.kind]
        if defaults and default is not None:
            kwargs["default"] = setting.default
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(flag_of(setting), **kwargs)


def _choice(setting: Setting, text: str):
    """A flag's value of a choice setting that takes None: `off` is None, the others as named."""
    if text == OFF:
        return None
    if text not in setting.choices:
        names = ", ".join(OFF if c is None else c for c in setting.choices)
        raise argparse.ArgumentTypeError(f"{short_repr(text)} is not allowed; allowed: {names}")
    return text


def check_flags(args: argparse.Namespace, settings: list[Setting]) -> None:
    """Check every given flag of `settings` by its config setting; errors name the flag."""
    for setting in settings:
        value = getattr(args, setting.name, None)
        if value is not None:
            setting.check(value, GuidanceError, flag_of(setting))


# -------------------------------------------------------------------------------------------------------------
# Checks shared by the commands (all before a model loads)
# -------------------------------------------------------------------------------------------------------------


def _given(value, default):
    """The flag's value when it was given (0 and negative numbers included), else the default."""
    return default if value is None else value


def _device(value: str | None) -> str:
    """The device to run on: the flag's, checked to exist here, else cuda when available, else cpu."""
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise CLIError(
            f"--device {short_repr(value)} is not a device; allowed: cpu, cuda, cuda:N, mps"
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise CLIError(
            f"--device {value!r}: {device.type} is not available on this machine; use --device cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return value


def _read_text(path: str, flag: str) -> str:
    """A UTF-8 text file of at most MAX_FILE_BYTES, else CLIError naming the flag and the file."""
    file = Path(path)
    try:
        if not file.is_file():
            raise CLIError(f"{flag} {str(path)!r}: no such file")
        if file.stat().st_size > MAX_FILE_BYTES:
            raise CLIError(f"{flag} {str(path)!r} is larger than {MAX_FILE_BYTES // 2**20} MiB")
        data = file.read_bytes()
    except OSError as error:
        raise CLIError(f"{flag} {short_repr(str(path))}: {error.strerror or error}") from None
    if b"\0" in data:
        raise CLIError(f"{flag} {str(path)!r} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"{flag} {str(path)!r} is not UTF-8 text") from None


def _heads(args: argparse.Namespace) -> str | None:
    """`--pag-heads` as heads, a preset path or None, with every SoftPAG flag checked (no model needed)."""
    check_flags(args, PAG_FLAGS)
    heads = resolve_heads(args.pag_heads, "--pag-heads")
    if not heads or not heads.strip():
        return None
    selection = HeadSelection.parse(heads, "--pag-heads")
    config = {s.name.removeprefix("pag_"): getattr(args, s.name) for s in PAG_FLAGS if s.name != "pag_heads"}
    SoftPAGConfig(heads=selection, **{k: v for k, v in config.items() if v is not None})
    return heads


def _load(model: str, dtype: str, device: str):
    """The HeadHunter pipeline of a checked model, on its device, progress bars off (`tools.console`)."""
    before_loading(recommended_settings(model).get("max_sequence_length"))
    import torch

    from pipelines.headhunter import HeadHunterPipeline

    pipe = HeadHunterPipeline.from_pretrained(model, dtype=getattr(torch, dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def warn_vocabulary(model: str, prompts: list[str], labels: list[str] | None = None) -> None:
    """One warning line on stderr, before any work, when prompts hold what the model was not trained on (the
    words and grammar its folder records: `model_vocabulary`); nothing for models that record none. `labels` name
    where each prompt comes from (a job file's lines)."""
    vocabulary = model_vocabulary(model)
    if vocabulary is None:
        return
    found = [(i, p, problems) for i, p in enumerate(prompts) if (problems := vocabulary.problems(p))]
    if not found:
        return
    i, prompt, problems = found[0]
    which = f"{labels[i]}: {short_repr(prompt)}" if labels else short_repr(prompt)
    more = f" (and {len(found) - 1} more of the {len(prompts)} prompts)" if len(found) > 1 else ""
    print(f"headhunter: warning: {which}: the model was not trained on {'; '.join(problems)}{more}; it will draw "
          f"something else (its words and examples: headhunter vocabulary --model {model_name(model)})",
          file=sys.stderr)  # fmt: skip


def _heads_per_layer(pipe) -> dict:
    from guidance.adapters import heads_layout
    from guidance.swap import denoiser_of

    return heads_layout(denoiser_of(pipe)).heads_per_layer


# -------------------------------------------------------------------------------------------------------------
# generate
# -------------------------------------------------------------------------------------------------------------


def _generation(args: argparse.Namespace, recommended: dict) -> GenerationConfig:
    """The checked generation settings: flags, else the model folder's recommendation, else the config's."""
    check_flags(
        args, [GENERATION_SETTINGS[k] for k in ("prompt", "negative_prompt", "seed")] + GENERATION_FLAGS
    )
    values = {s.name: _given(getattr(args, s.name), recommended.get(s.name)) for s in GENERATION_FLAGS}
    values["width"] = _given(args.width, recommended.get("width", values["height"]))
    given = {k: v for k, v in values.items() if v is not None}
    return GenerationConfig(args.prompt, args.negative_prompt, seed=args.seed, **given)


def _structured(args: argparse.Namespace, model: str, heads: str | None) -> dict:
    """`--structured` as call arguments, refused before the model loads where its family does not allow it."""
    if args.structured is None:
        return {}
    before_loading()  # the family is read through the pipeline classes, which import the libraries
    mode = check_structured(args.structured, structured_support(model), heads, flag_of(STRUCTURED))
    return {"structured": mode}


@dataclass(frozen=True)
class _Image:
    """One image `generate` makes: the model as the user named it, what the call is given (prompt, seed and every
    argument, recorded as they are), its SoftPAG keywords ({} unguided) and record entries carried over from a
    --from-png record (its preset's name and hash)."""

    model: str
    made: dict
    pag: dict
    kept: dict


def _generate(args: argparse.Namespace) -> int:
    """Generate one image (and its unguided twin with --compare) into a file that did not exist; its PNG records
    what made it (`image_record`), enough to make it again (`--from-png`, `record_call`)."""
    image, model = _from_png(args) if args.from_png is not None else _from_flags(args)
    twin = ("-unguided",) if args.compare and image.pag else ()
    target = png_target(args.out, args.name, args.overwrite, twin)
    heads = HeadSelection.parse(image.pag["pag_heads"], "--pag-heads") if image.pag else None
    if heads:
        before_loading()  # the denoiser's class is imported to read its heads from its config
    known = folder_heads_per_layer(model) if heads else None  # before any weight loads
    if known is not None:
        heads.validate(known, "--pag-heads")
    warn_vocabulary(model, [image.made["prompt"]])
    pipe = _load(model, args.dtype, _device(args.device))
    if heads and known is None:  # a hub model: its heads are known once it has loaded
        heads.validate(_heads_per_layer(pipe), "--pag-heads")
    _write(pipe, target, image)
    if twin:
        _write(pipe, target.with_name(target.stem + "-unguided.png"), replace(image, pag={}, kept={}))
    return 0


def _write(pipe, path: Path, image: _Image) -> None:
    """Make `image` with `pipe` and write it with its record (a video as an animated PNG)."""
    import torch

    made = with_true_cfg(image.made, pipe)
    call = {k: v for k, v in made.items() if k != "seed" and not (k == "noun_phrases" and not v)}
    generator = torch.Generator(device="cpu").manual_seed(made["seed"])
    picture = output_images(pipe(generator=generator, **pipeline_call(call, pipe), **image.pag))[0]
    record = {**image_record(image.model, made, image.pag), **image.kept}
    save_png(picture, path, record_parameters(record), record)
    print(path)


def _from_flags(args: argparse.Namespace) -> tuple[_Image, str]:
    """The image the flags describe, every value checked before the model loads; (image, model to load)."""
    if args.prompt is None:
        raise CLIError(
            "headhunter generate: give a prompt, or --from-png IMAGE to make a recorded image again"
        )
    model = check_model(args.model)
    generation = _generation(args, recommended_settings(model))
    heads = _heads(args)
    structured = _structured(args, model, heads)
    made = {"prompt": generation.prompt, "seed": generation.seed, **model_call_extras(model),
            **generation.call_arguments(), **structured}  # fmt: skip
    if structured:
        from pipelines.structured import structured_phrases

        made["noun_phrases"] = structured_phrases(generation.prompt)  # the ones the call finds, recorded
    pag = {**{s.name: getattr(args, s.name) for s in PAG_FLAGS}, "pag_heads": heads} if heads else {}
    pag, kept = explicit_over_preset(
        pag, getattr(args, "explicit", set())
    )  # --pag-stop 1.0 over a preset's 0.3
    return _Image(args.model, made, pag, kept), model


# What a --from-png flag given explicitly replaces in the record: generation settings by name, SoftPAG below.
FROM_PNG_GENERATION = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "height",
                       "width")  # fmt: skip
PRESET_RECORD = ("pag_preset", "pag_preset_sha256")


def _from_png(args: argparse.Namespace) -> tuple[_Image, str]:
    """The image a PNG's record describes (`read_png_record`), with the flags given explicitly in place of the
    recorded values (`--pag-heads` replaces the recorded guidance whole; `--pag-scale` sets every group's w,
    `--pag-strength` every head's u); every value checked before the model loads."""
    record = read_png_record(args.from_png, "--from-png")
    given = args.explicit
    if "model" in given:
        named, model = args.model, check_model(args.model)
    else:
        named, model = record["model"], _recorded_model(record, args.from_png)
    check_flags(
        args, [GENERATION_SETTINGS[k] for k in ("prompt", "negative_prompt", "seed")] + GENERATION_FLAGS
    )
    call = record_call(record)
    pag = {k: call.pop(k) for k in [*SOFTPAG_SETTINGS] if k in call}
    made = {**call, "seed": record["seed"]}
    made.update({k: getattr(args, k) for k in FROM_PNG_GENERATION if k in given})
    GenerationConfig(made["prompt"], made.get("negative_prompt"), seed=made["seed"],
                     **{k: made[k] for k in FROM_PNG_GENERATION[3:] if made.get(k) is not None})  # fmt: skip
    pag, kept = _png_guidance(args, given, pag, {k: record[k] for k in PRESET_RECORD if k in record})
    structured = args.structured if "structured" in given else made.get("structured")
    made.pop("structured", None)
    if "prompt" in given or "structured" in given:
        made.pop("noun_phrases", None)  # found again for the prompt and mode of this call
    if structured is not None:
        before_loading()  # the family is read through the pipeline classes, which import the libraries
        mode = check_structured(
            structured, structured_support(model), pag.get("pag_heads"), flag_of(STRUCTURED)
        )
        made["structured"] = mode
        if "noun_phrases" not in made:
            from pipelines.structured import structured_phrases

            made["noun_phrases"] = structured_phrases(made["prompt"])
    return _Image(named, made, pag, kept), model


def _recorded_model(record: dict, png: str) -> str:
    """The model a record names, checked here (a hub id, or a folder relative to the working directory)."""
    model = record_model(record)
    try:
        return check_model(model, "model")
    except (ModelFolderError, OutputError) as error:
        raise OutputError(
            f"--from-png {short_repr(png)} was made with the model {short_repr(record['model'])}, which cannot be "
            f"used here ({error}); run from the folder it was made in, or pass --model"
        ) from None


def _png_guidance(args: argparse.Namespace, given: set[str], pag: dict, preset: dict) -> tuple[dict, dict]:
    """(SoftPAG keywords, record entries kept) of a --from-png image: the recorded guidance with the SoftPAG flags
    given explicitly in its place; `--pag-heads` replaces it whole (the other flags as in a plain generate)."""
    flags = [s.name for s in PAG_FLAGS if s.name in given]
    if "pag_heads" in flags:
        heads = _heads(args)
        return (
            {**{s.name: getattr(args, s.name) for s in PAG_FLAGS}, "pag_heads": heads} if heads else {}
        ), {}
    if not pag:
        if flags:
            raise CLIError(f"{flag_of(SOFTPAG_SETTINGS[flags[0]])}: --from-png's image was made without head "
                           "guidance; give --pag-heads too")  # fmt: skip
        return {}, {}
    check_flags(args, [SOFTPAG_SETTINGS[name] for name in flags])
    selection = pag["pag_heads"]
    if "pag_scale" in flags or "pag_strength" in flags:
        groups = tuple(
            HeadGroup(tuple(HeadEntry(h.layer, h.head, args.pag_strength if "pag_strength" in flags else h.strength,
                                      h.attention) for h in g.heads),
                      g.name, args.pag_scale if "pag_scale" in flags else g.scale)
            for g in selection.groups
        )  # fmt: skip
        selection = HeadSelection(groups, selection.metadata)
    # w and u are in the groups and heads
    kept = {name: getattr(args, name) for name in flags if name not in ("pag_scale", "pag_strength")}
    pag = {**pag, **kept, "pag_heads": selection}
    SoftPAGConfig(heads=selection, **{k.removeprefix("pag_"): v for k, v in pag.items() if k != "pag_heads"})
    return pag, preset


def _explicit(argv: list[str], command: str) -> set[str]:
    """The destinations of the flags given on the command line for `command` (not those left at a default)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) & {a.dest for a in sub._actions}


# -------------------------------------------------------------------------------------------------------------
# search
# -------------------------------------------------------------------------------------------------------------


def _read_prompts(args: argparse.Namespace) -> list[str]:
    """--prompt values and the lines of --prompts, each checked as a prompt."""
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += [
            line.strip() for line in _read_text(args.prompts, "--prompts").splitlines() if line.strip()
        ]
    if not prompts:
        raise CLIError("headhunter search: give --prompt (repeatable) or --prompts FILE")
    for prompt in prompts:
        GENERATION_SETTINGS["prompt"].check(prompt, GuidanceError, "--prompt")
    return prompts


def _check_search(args: argparse.Namespace) -> list[str]:
    """Every search flag that needs no model; returns the prompts."""
    check_flags(args, [*SEARCH_FLAGS, *GENERATION_FLAGS[:2], *PAG_FLAGS[1:4]])
    for seed in args.seeds:
        GENERATION_SETTINGS["seed"].check(seed, GuidanceError, "--seeds")
    if len(args.seeds) != len(set(args.seeds)):
        raise CLIError(f"--seeds {args.seeds}: each seed once")
    kind, _, scorer = args.objective.partition(":")
    if kind in ("clip", "pickscore"):
        check_model(scorer, f"--objective {kind}:")
    check_writable_folder(args.out, "--out")
    return _read_prompts(args)


def _search(args: argparse.Namespace) -> int:
    """Run a head search and write preset.json, headmap.png (with --sweep) and report.md to --out
    (`tools.search_run.search_to_folder`), and print the report."""
    from guidance.adapters import heads_layout
    from guidance.objectives import get_objective
    from guidance.search import SearchSettings, search_profile
    from guidance.swap import denoiser_of
    from tools.search_run import guard_words, search_objective, search_to_folder

    model = check_model(args.model)
    prompts = _check_search(args)
    get_objective(args.objective)  # an unknown name fails before the model loads
    warn_vocabulary(model, prompts)
    pipe = _load(model, args.dtype, _device(args.device))
    arch = heads_layout(denoiser_of(pipe)).arch
    profile = search_profile(args.profile, arch)
    recommended = recommended_settings(model)
    steps, cfg = (GENERATION_SETTINGS[k].default for k in ("num_inference_steps", "guidance_scale"))
    defaults = dict(steps=recommended.get("num_inference_steps", steps), size=recommended.get("height"),
                    guidance_scale=recommended.get("guidance_scale", cfg))  # fmt: skip
    objective, max_drop, min_score = search_objective(args.objective, args.guard, profile, args.max_drop)
    settings = SearchSettings.from_profile(
        args.profile, arch, prompts, args.seeds, defaults, steps=args.num_inference_steps, size=args.size,
        guidance_scale=args.guidance_scale, pag_scale=args.pag_scale, strength=args.search_strength,
        identity=args.pag_identity, batch=args.batch, k=args.k, rounds=args.rounds, model=model_name(args.model),
        objective=objective.name, extra=model_call_extras(model),
    )  # fmt: skip
    settings = search_with_true_cfg(settings, pipe)
    done = search_to_folder(pipe, objective, settings, Path(args.out), sweep=args.sweep, layers=args.layers,
                            use_strength=args.use_strength, name=args.objective,
                            guard=guard_words(args.guard, max_drop, min_score))  # fmt: skip
    if done is None:  # under accelerate launch, rank 0 writes and prints the outputs
        return 0
    report, found = done
    print("\n".join(report))
    if found is not None:
        print(found)
    return 0


# -------------------------------------------------------------------------------------------------------------
# batch
# -------------------------------------------------------------------------------------------------------------


def _batch_defaults(args: argparse.Namespace, model: str) -> dict:
    """Job defaults: the model's recommendations < --config < flags, each checked."""
    from tools.batch import FIELDS

    check_flags(args, [*GENERATION_FLAGS, GENERATION_SETTINGS["batch_size"], *PAG_FLAGS])
    recommended = recommended_settings(model)
    defaults = {k: v for k, v in recommended.items() if k in FIELDS}
    defaults.update(
        height=recommended.get("height"), width=recommended.get("width", recommended.get("height"))
    )
    if args.config:
        try:
            config = json.loads(_read_text(args.config, "--config"))
        except json.JSONDecodeError as error:
            raise CLIError(f"--config {args.config!r} is not valid JSON: {error}") from None
        if not isinstance(config, dict):
            raise CLIError(
                f"--config {args.config!r} must hold a JSON object of defaults, not {type(config).__name__}"
            )
        defaults.update(config)
    flags = {s.name: getattr(args, s.name) for s in [*GENERATION_FLAGS, *PAG_FLAGS]}
    defaults.update({k: v for k, v in flags.items() if v is not None})
    return defaults


def _batch(args: argparse.Namespace) -> int:
    """Validate a job file (before and after loading the model), generate what is not done, print a summary."""
    from tools.batch import BatchRunner, JobFileError, plan, print_problems

    if args.engine != "ray" and (args.workers is not None or args.ray_address is not None):
        flag = "--workers" if args.workers is not None else "--ray-address"
        raise CLIError(f"{flag} is for --engine ray; this run uses --engine {args.engine}")
    if args.engine == "ray":
        from tools.batch_ray import require_ray

        require_ray()  # before any work: says how to install it
    model = check_model(args.model)
    defaults = _batch_defaults(args, model)
    check_writable_folder(args.out, "--out")
    device = _device(args.device)
    before_loading()  # the model's family is read through the pipeline classes, which import the libraries
    support = structured_support(model)
    known = folder_heads_per_layer(model)  # the model's heads from its folder, before any weight loads
    try:  # every problem in one report (a hub model's heads: a second pass once it has loaded)
        items, problems = plan(args.jobs, defaults, known, resolve_heads, args.skip_invalid, support)
        lines = {item.line: item.settings["prompt"] for item in items}
        warn_vocabulary(model, list(lines.values()), [f"line {n}" for n in lines])
        pipe = _load(model, args.dtype, device)
        if known != _heads_per_layer(pipe):
            items, problems = plan(
                args.jobs, defaults, _heads_per_layer(pipe), resolve_heads, args.skip_invalid, support
            )
    except JobFileError as error:
        print(f"headhunter batch: {printable(str(error))}", file=sys.stderr)
        return 2
    if problems:
        print(f"headhunter batch: skipping {len(problems)} invalid line(s):", file=sys.stderr)
        print_problems(problems)
    runner = BatchRunner(
        pipe, str(args.model), args.out, args.batch_size, resolve_heads, model_call_extras(model)
    )
    if args.engine == "ray":
        from functools import partial

        from tools.batch_ray import run_ray

        counts = run_ray(runner, items, partial(_load, model, args.dtype, device), args.workers or 2,
                         args.ray_address, device.startswith("cuda"), args.redo_changed, not args.quiet)  # fmt: skip
    else:
        if args.engine == "accelerate":
            runner.use_accelerate()
        counts = runner.run(items, progress=not args.quiet, redo_changed=args.redo_changed)
    print(f"rank {runner.rank}: {counts['ok']} generated, {counts['done_before']} already done, "
          f"{counts['failed']} failed, {counts['items_per_second']:.2f} items/s")  # fmt: skip
    return 1 if counts["failed"] or problems else 0


# -------------------------------------------------------------------------------------------------------------
# presets
# -------------------------------------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str] | None = None, width: int | None = None) -> str:
    """Rows as aligned columns under an optional header; the last column wraps at word boundaries to fit
    `width` (the terminal's). Control characters in cells are printed escaped (`printable`)."""
    width = width or shutil.get_terminal_size((110, 24)).columns
    cells = [[printable(cell) for cell in row] for row in ([header, *rows] if header else rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    indent = sum(widths) + 2 * len(widths)
    last = max(20, width - indent)
    lines = []
    for row in cells:
        wrapped = textwrap.wrap(row[-1], last, break_long_words=False, break_on_hyphens=False) or [""]
        lead = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  "
        lines.append((lead + wrapped[0]).rstrip())
        lines += [" " * indent + more for more in wrapped[1:]]
    return "\n".join(lines)


def _preset_shape(data: dict) -> str:
    """A preset's layers x heads: as it records them, else those of the model it records where that is a folder
    here (a shipped toy model), read from the model's config; "-" where neither is known."""
    shape = data.get("layers_x_heads")
    if isinstance(shape, list) and len(shape) == 2:
        return f"{shape[0]} x {shape[1]}"
    model = data.get("model")
    known = (
        folder_heads_per_layer(record_model({"model": model})) if isinstance(model, str) and model else None
    )
    if not known or not known.get("attn"):
        return "-"
    return f"{len(known['attn'])} x {max(known['attn'].values())}"


def _presets_list(width: int | None = None) -> int:
    """One aligned row per preset (name, heads, the shape and model it is for), its source wrapped below; a
    broken preset file is a row that says so, its reason below (exit code 0: the others are usable)."""
    width = width or shutil.get_terminal_size((110, 24)).columns
    rows, notes = [], []
    for preset in read_presets():
        if preset.selection is None:
            rows.append([preset.name, "-", "-", "broken (not usable)"])
            note = preset.problem
        else:
            meta = preset.selection.metadata
            shape = _preset_shape(dict(meta))
            rows.append([preset.name, str(len(preset.selection.entries)), shape, str(meta.get("model", "?"))])
            note = str(meta.get("source", ""))
        notes.append(textwrap.wrap(printable(note), width - 4, break_long_words=False))
    lines = table(rows, ["name", "heads", "layers x heads", "model"], width).splitlines()
    print(lines[0])
    for line, note in zip(lines[1:], notes, strict=True):
        print("\n".join([line, *("    " + part for part in note)]))
    return 0


def _presets_show(name: str | None) -> int:
    if not name:
        raise CLIError("headhunter presets show: give a preset name or path")
    path = resolve_heads(name, "name")
    if not str(path).lower().endswith(".json"):
        raise CLIError(f"presets show {name!r}: no such preset; see `headhunter presets list`")
    selection = HeadSelection.load(path, Path(path).name)
    selection.check(Path(path).name)
    meta = selection.metadata
    about = [["preset", Path(path).stem], ["model", str(meta.get("model", "?"))],
             ["layers x heads", _preset_shape(dict(meta))], ["source", str(meta.get("source", ""))]]  # fmt: skip
    if "description" in meta:
        about.append(["description", str(meta["description"])])
    print(table(about))
    print()
    scale = SOFTPAG_SETTINGS["pag_scale"]
    rows = [[g.name, h.label.split("=")[0], "call's --pag-strength" if h.strength is None else f"{h.strength:g}",
             f"--pag-scale ({scale.default:g})" if g.scale is None else f"{g.scale:g}"]
            for g in selection.groups for h in g.heads]  # fmt: skip
    print(table(rows, ["group", "head", "u", "scale w"]))
    return 0


def _presets(args: argparse.Namespace) -> int:
    return _presets_list() if args.action == "list" else _presets_show(args.name)


# -------------------------------------------------------------------------------------------------------------
# Parser and entry point
# -------------------------------------------------------------------------------------------------------------


def _debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (and --verbose)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' notices and loading bars (dropped by default)")  # fmt: skip


def _common(
    parser: argparse.ArgumentParser, model: Path = DEFAULT_MODEL, what: str = "the toy SD3 model"
) -> None:
    """Flags every model command has."""
    _debug(parser)
    parser.add_argument("--model", default=str(model), help=f"hub id or folder (default: {what})")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")


def _vocabulary_epilog() -> str | None:
    """generate's help about the words the default model knows (its folder's recorded grammar), or None."""
    try:
        vocabulary = model_vocabulary(DEFAULT_MODEL)
    except ValueError:
        return None
    if vocabulary is None:
        return None
    example = next((e for e in vocabulary.examples if " and " in e or " of " in e), None)
    return (
        f"The default model (the toy SD3) was trained on colours {', '.join(vocabulary.colors)}, shapes "
        f"{', '.join(vocabulary.shapes)}, sizes {', '.join(vocabulary.sizes)}, {', '.join(vocabulary.styles)}, "
        f"positions and relations{f', e.g. {example!r}' if example else ''}; a prompt with other words is warned "
        "about before any work. Every word and example prompt: headhunter vocabulary [--model M]."
    )


def _vocabulary(args: argparse.Namespace) -> int:
    """Print the words and example prompts a model folder records (the toy models' grammar)."""
    model = check_model(args.model)
    vocabulary = model_vocabulary(model)
    if vocabulary is None:
        print(f"{model_name(args.model)} records no vocabulary (the toy models record the grammar of the captions "
              "they were trained on; other models take any prompt)")  # fmt: skip
        return 0
    print("\n".join(vocabulary.describe()))
    print("examples (prompts of the grammar, of pairings seen in training, with how often the model drew them "
          "fully correct when measured):")  # fmt: skip
    for example in vocabulary.examples:
        score = vocabulary.example_scores.get(example)
        measured = (
            f"  ({round(score['correct'] * score['seeds'])} of {score['seeds']} seeds)" if score else ""
        )
        print(f"  {example}{measured}")
    return 0


def _vocabulary_parser(sub) -> None:
    vocabulary = sub.add_parser("vocabulary", help="the words and example prompts a toy model was trained on")
    vocabulary.add_argument(
        "--model", default=str(DEFAULT_MODEL), help="a model folder (default: the toy SD3)"
    )
    _debug(vocabulary)
    vocabulary.set_defaults(func=_vocabulary)


def _generate_parser(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate one image with SoftPAG heads (PNG with parameters)",
        epilog=_vocabulary_epilog(),
    )
    gen.add_argument("prompt", nargs="?", help="what to draw (with --from-png: replaces the recorded prompt)")
    gen.add_argument(
        "--from-png", metavar="IMAGE",
        help="make an image again from the record in a PNG of `headhunter generate`, `batch` or the demo (model as "
        "named, prompt, seed, heads with their u and w, every setting), bit for bit; flags given with it replace "
        "the recorded values (--pag-heads the recorded guidance whole, --pag-scale every group's w, --pag-strength "
        "every head's u)",
    )  # fmt: skip
    _common(gen)
    gen.add_argument("--out", default="outputs", help="a folder (default: outputs) or a .png file")
    gen.add_argument("--name", help="file name in the --out folder (default: image, numbered if taken)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing file")
    gen.add_argument("--seed", type=int, default=GENERATION_SETTINGS["seed"].default)
    gen.add_argument("--negative-prompt")
    add_setting_flags(gen, GENERATION_FLAGS, defaults=False)  # default: the model's recommendation
    add_setting_flags(gen, PAG_FLAGS)
    add_setting_flags(gen, [STRUCTURED])
    gen.add_argument(
        "--compare", action="store_true", help="also write the unguided image from the same seed"
    )
    gen.set_defaults(func=_generate)


def _search_parser(sub) -> None:
    from guidance.search import SEARCH_PROFILES

    search = sub.add_parser(
        "search", help="search heads for an objective (preset.json, headmap.png, report.md)"
    )
    _common(search)
    search.add_argument(
        "--objective", default="toy-quality", help="toy-quality, toy-dark, saturation, clip:<model>, ..."
    )
    search.add_argument("--guard", help=f"keep this objective within --max-drop (default "
                        f"{SEARCH_SETTINGS['max_drop'].default:g}) of the unguided "
                        "images; under --profile paper, at or above the paper's absolute threshold instead")  # fmt: skip
    search.add_argument("--profile", choices=sorted(SEARCH_PROFILES), default="ours",
                        help="named search settings ('paper': the official search's)")  # fmt: skip
    search.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    search.add_argument("--prompts", help="a text file, one prompt per line")
    search.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    for setting in SEARCH_FLAGS:
        # k, rounds, size: the profile's / model's; max_drop: its default unless the profile gives the guard an
        # absolute threshold (the paper's), which then stands alone unless --max-drop is given too
        defaults = setting.name in ("search_strength", "use_strength", "batch")
        add_setting_flags(search, [setting], defaults=defaults)
    add_setting_flags(search, GENERATION_FLAGS[:2], defaults=False)
    add_setting_flags(search, [SOFTPAG_SETTINGS["pag_scale"], SOFTPAG_SETTINGS["pag_identity"]])
    search.add_argument("--sweep", action="store_true", help="also score every head alone (the head map)")
    search.add_argument(
        "--layers", action="store_true", help="also score layer-level PAG (all heads of a layer)"
    )
    search.add_argument("--out", default="outputs/search")
    search.set_defaults(func=_search)


ENGINES = ("local", "accelerate", "ray")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag in its error)."""
    if not text.strip().isdigit() or len(text.strip()) > 6 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{short_repr(text)} is not allowed; allowed: an integer >= 1")
    return int(text)


def _batch_parser(sub) -> None:
    batch = sub.add_parser(
        "batch", help="run a JSONL/CSV job file: resumable, one PNG + manifest line per item"
    )
    batch.add_argument("jobs", help="JSONL (one job object per line) or CSV with a header")
    batch.add_argument("--out", required=True)
    _common(batch)
    batch.add_argument("--config", help="a JSON file of defaults for every line")
    add_setting_flags(batch, [GENERATION_SETTINGS["batch_size"]])
    batch.add_argument("--skip-invalid", action="store_true", help="run the valid lines, report the others")
    batch.add_argument("--redo-changed", action="store_true",
                       help="regenerate finished items whose job changed or whose image is damaged")  # fmt: skip
    add_setting_flags(batch, GENERATION_FLAGS, defaults=False)
    add_setting_flags(batch, PAG_FLAGS, defaults=False)  # unset flags leave the job file's values
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.add_argument(
        "--engine", choices=ENGINES, default="local",
        help="local: this process (ranks from RANK/WORLD_SIZE); accelerate: under `accelerate launch`, the jobs "
        "split with PartialState; ray: a pool of Ray Data actors (pip install -e '.[ray]')",
    )  # fmt: skip
    batch.add_argument("--workers", type=_positive_int,
                       help="--engine ray: actors, each with its own pipeline (default 2)")  # fmt: skip
    batch.add_argument("--ray-address", help="--engine ray: join this cluster ('auto' or host:port); "
                       "default: start a local one")  # fmt: skip
    batch.set_defaults(func=_batch)


# -------------------------------------------------------------------------------------------------------------
# views (UpFusion)
# -------------------------------------------------------------------------------------------------------------

FRAMES = UPFUSION_SETTINGS["frames"]  # --orbit's range, and the most --azimuth values (MAX_QUERY_CAMERAS)
VIEWS = UPFUSION_SETTINGS["views"]
# A view's file is named by its angles: one turn either way names every camera (the same camera modulo 360 is
# refused by `_check_distinct`).
AZIMUTH = UPFUSION_SETTINGS["azimuth"].narrowed(-360, 360)
ELEVATION = UPFUSION_SETTINGS["elevation"]
VIEW_SAMPLING = [UPFUSION_SETTINGS["num_inference_steps"], UPFUSION_SETTINGS["guidance_scale"]]


def _view_images(paths: list[str]) -> list:
    """The input views as RGB PIL images (RGBA composited on white), each file checked before any model loads."""
    from PIL import Image, UnidentifiedImageError

    from pipelines.upfusion import on_white

    if not VIEWS.low <= len(paths) <= VIEWS.high:
        raise CLIError(f"views: give {VIEWS.low:g} to {VIEWS.high:g} images; got {len(paths)}")
    images = []
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise CLIError(f"views: image {str(path)!r}: no such file")
        try:
            with Image.open(file) as opened:
                images.append(on_white(opened))
        except (UnidentifiedImageError, OSError) as error:
            raise CLIError(f"views: image {str(path)!r} cannot be read as an image ({error})") from None
    if len({image.size for image in images}) > 1:
        raise CLIError(f"views: the images must have one size; got {sorted({i.size for i in images})}")
    return images


def _view_cameras(args: argparse.Namespace) -> list[tuple[float, float]] | None:
    """(azimuth, elevation) pairs from the flags (elevation broadcast when one is given), or None for --orbit."""
    if args.orbit is not None:
        if args.azimuth:
            raise CLIError("views: give --azimuth or --orbit, not both")
        FRAMES.check(args.orbit, CLIError, "--orbit")
        UPFUSION_SETTINGS["orbit_elevation"].check(args.orbit_elevation, CLIError, "--orbit-elevation")
        return None
    azimuths = args.azimuth or [AZIMUTH.default]
    if len(azimuths) > FRAMES.high:
        raise CLIError(
            f"--azimuth has {len(azimuths)} values; allowed: at most {FRAMES.high:g} views per run (use --orbit "
            "for a turntable, or several runs)"
        )
    elevations = args.elevation or [ELEVATION.default]
    if len(elevations) == 1:
        elevations = elevations * len(azimuths)
    if len(elevations) != len(azimuths):
        raise CLIError(
            f"--elevation has {len(elevations)} values for {len(azimuths)} azimuths; give 1 or as many"
        )
    for setting, values in ((AZIMUTH, azimuths), (ELEVATION, elevations)):
        for value in values:
            setting.check(value, CLIError, setting.flag)
    cameras = list(zip(azimuths, elevations, strict=True))
    _check_distinct(cameras)
    return cameras


def _view_name(azimuth: float, elevation: float) -> str:
    """The file of one view: its angles to 6 significant digits (`:g`)."""
    return f"view-az{azimuth:g}-el{elevation:g}.png"


def _check_distinct(cameras: list[tuple[float, float]]) -> None:
    """Refuse two cameras that are one: the same file name (angles equal to its 6 significant digits), or the
    same azimuth modulo 360 (0 and 360, -90 and 270) to that precision at the same elevation."""
    seen: dict[tuple[str, str], int] = {}
    for i, (azimuth, elevation) in enumerate(cameras):
        turn = float(f"{azimuth % 360:g}") % 360
        for key in (("name", _view_name(azimuth, elevation)), (f"{turn:g}", f"{elevation:g}")):
            if key in seen:
                j = seen[key]
                (a, e), (b, f) = cameras[j], cameras[i]
                raise CLIError(
                    f"--azimuth/--elevation: view {j + 1} (azimuth {a!r}, elevation {e!r}) and view {i + 1} "
                    f"(azimuth {b!r}, elevation {f!r}) are the same camera to the precision of the file names "
                    f"({_view_name(a, e)}); give each view once"
                )
            seen[key] = i


def _view_targets(out: str, names: list[str], overwrite: bool) -> list[Path]:
    """The files `views` writes, checked before the model loads as `generate` checks its file (`png_target`): a
    folder that can be written, no target a folder, none that exists (a link too) unless --overwrite."""
    folder = check_writable_folder(out)
    targets = [folder / name for name in names]
    for target in targets:
        if target.is_dir():
            raise OutputError(f"--out: {str(target)!r} is a folder")
    taken = [t for t in targets if t.exists() or t.is_symlink()]
    if taken and not overwrite:
        more = f" (and {len(taken) - 1} more of the {len(targets)} files)" if len(taken) > 1 else ""
        raise OutputError(f"--out: {str(taken[0])!r} exists{more}; pass --overwrite or choose another --out")
    return targets


def _views(args: argparse.Namespace) -> int:
    """Novel views of the object in the input images (UpFusion): one PNG per view, or an orbit and its GIF.

    Every file is written whole or not at all, never through a link (`save_png`, `write_atomically`)."""
    import torch

    images = _view_images(args.images)
    cameras = _view_cameras(args)
    check_flags(args, [*VIEW_SAMPLING, GENERATION_SETTINGS["seed"]])
    if cameras is None:
        names = [f"orbit-{i:03d}.png" for i in range(args.orbit)] + ["orbit.gif"]
    else:
        names = [_view_name(a, e) for a, e in cameras]
    targets = _view_targets(args.out, names, args.overwrite)
    model = check_model(args.model)
    device = _device(args.device)
    before_loading()
    from pipelines.upfusion import UpFusionPipeline, orbit

    pipe = UpFusionPipeline.from_pretrained(model, dtype=getattr(torch, args.dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    steps, cfg = pipe.sampling(args.num_inference_steps, args.guidance_scale)  # None: the model's preset
    call = dict(num_inference_steps=steps, guidance_scale=cfg, upsrt_only=args.upsrt_only,
                generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    settings = {"model": model_name(args.model), "steps": steps, "guidance_scale": cfg, "seed": args.seed,
                "upsrt_only": args.upsrt_only}  # fmt: skip
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    if cameras is None:
        gif = targets.pop()
        views = orbit(pipe, images, frames=args.orbit, elevation=args.orbit_elevation, gif_path=gif, **call)
        cameras = [(360.0 * k / args.orbit, args.orbit_elevation) for k in range(args.orbit)]
        print(gif)
    else:
        views = pipe(images=images, query_cameras=cameras, **call).images
    for view, target, (azimuth, elevation) in zip(views, targets, cameras, strict=True):
        record = {**settings, "azimuth": azimuth, "elevation": elevation}
        text = "UpFusion view, " + ", ".join(f"{k}: {v}" for k, v in record.items())
        save_png(view, target, text, {"upfusion": record})
        print(target)
    return 0


def _views_parser(sub) -> None:
    views = sub.add_parser("views", help="novel views of an object from 1-6 unposed images (UpFusion)")
    views.add_argument("images", nargs="+", help="1-6 images of one object, the first is the reference view")
    _common(views, UPFUSION_MODEL, "the toy UpFusion model")
    views.add_argument("--azimuth", type=float, nargs="+",
                       help=f"{AZIMUTH.help} Allowed: {AZIMUTH.allowed()} (default {AZIMUTH.default:g}).")  # fmt: skip
    views.add_argument("--elevation", type=float, nargs="+",
                       help=f"{ELEVATION.help} One for all, or one per azimuth (default {ELEVATION.default:g}).")  # fmt: skip
    views.add_argument("--orbit", type=int, metavar="N",
                       help=f"{FRAMES.help} A turntable of N frames, {FRAMES.low:g} to {FRAMES.high:g} (PNGs and "
                       "orbit.gif)")  # fmt: skip
    add_setting_flags(views, [UPFUSION_SETTINGS["orbit_elevation"]])
    add_setting_flags(views, VIEW_SAMPLING, defaults=False)  # None: the model's preset
    views.add_argument("--seed", type=int, default=GENERATION_SETTINGS["seed"].default)
    views.add_argument("--upsrt-only", action="store_true", help="UpSRT's regression render, no diffusion")
    views.add_argument("--out", default="outputs/views", help="a folder (default: outputs/views)")
    views.add_argument("--overwrite", action="store_true", help="replace files that exist")
    views.set_defaults(func=_views)


def _convert_upfusion(args: argparse.Namespace) -> int:
    """Convert the official UpFusion checkpoints to a diffusers folder, or print the key tables or the parameter
    counts (`pipelines.convert_upfusion`, imported here: it loads diffusers and transformers)."""
    from pipelines.convert_upfusion import convert_upfusion, key_tables, parameter_counts

    if args.tables:
        print(key_tables(args.config), end="")
        return 0
    if args.counts:
        for name, count in parameter_counts(args.config).items():
            print(f"{name:14s} {count:>13,d}")
        return 0
    if args.upsrt is None or args.upfusion2d is None or args.out is None:
        raise CLIError("convert-upfusion: pass UPSRT.pt UPFUSION2D.pt and --out DIR (or --counts, --tables)")
    print(convert_upfusion(args.upsrt, args.upfusion2d, args.dinov2, args.sd15, args.out, args.config))
    return 0


def _convert_parser(sub) -> None:
    convert = sub.add_parser(
        "convert-upfusion",
        help="convert the official UpFusion checkpoints (upsrt.pt, upfusion2d.pt) to a diffusers folder",
    )
    convert.add_argument("upsrt", nargs="?", help="the official upsrt.pt")
    convert.add_argument("upfusion2d", nargs="?", help="the official upfusion2d.pt")
    convert.add_argument(
        "--dinov2", default="facebook/dinov2-base", help="DINOv2 ViT-B/14: a hub id or folder"
    )
    convert.add_argument(
        "--sd15",
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        help="SD1.5 (its tokenizer): hub id or folder",
    )
    convert.add_argument("--out", help="the folder to write (new or empty)")
    convert.add_argument(
        "--config", default="paper", choices=("paper", "paper-tiny"),
        help="the module sizes: paper (the official release) or paper-tiny (reduced, for tests)",
    )  # fmt: skip
    convert.add_argument("--counts", action="store_true", help="print the configuration's parameter counts")
    convert.add_argument("--tables", action="store_true", help="print the key tables as Markdown")
    _debug(convert)
    convert.set_defaults(func=_convert_upfusion)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `headhunter`."""
    parser = _Parser(prog="headhunter", description="Attention-head guidance for diffusers.")
    _debug(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _search_parser(sub)
    _batch_parser(sub)
    _views_parser(sub)
    _convert_parser(sub)
    _vocabulary_parser(sub)
    presets = sub.add_parser("presets", help="list or show head presets")
    presets.add_argument("action", choices=("list", "show"))
    presets.add_argument("name", nargs="?", help="preset name or path (for show)")
    _debug(presets)
    presets.set_defaults(func=_presets)
    return parser


# Errors in what the user gave (exit code 2); anything else is a failure while running (exit code 1).
INPUT_ERRORS = (CLIError, GuidanceError, HeadSelectionError, OutputError, ValueError)


def _fail(error: BaseException, debug: bool, code: int) -> int:
    """Print the error as one line (the traceback too with --debug); return the exit code."""
    if debug:
        traceback.print_exception(error)
    text = printable(" ".join(str(error).split()) or type(error).__name__)
    if code != 2:
        text = f"{type(error).__name__}: {text}" + ("" if debug else " (run with --debug for the traceback)")
    print(f"headhunter: error: {text}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `headhunter` console script: exit code 0, 1 (failed while running) or 2 (bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    quiet_console(verbose=debug or "--verbose" in argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            args.explicit = _explicit(argv, "generate")
        return args.func(args)
    except INPUT_ERRORS as error:
        return _fail(error, debug, 2)
    except KeyboardInterrupt:
        print("headhunter: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (the top level: one clear line instead of a traceback)
        return _fail(error, debug, 1)


if __name__ == "__main__":
    sys.exit(main())
