"""Settings and files shared by the tools (CLI, batch jobs, demo, benchmarks): where the assets are, a model
folder's recommended sampling settings, head presets, checks of model and output paths, and PNG metadata."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from guidance.config import SOFTPAG_SETTINGS, STRUCTURED_SETTINGS, SoftPAGConfig, StructuredError
from guidance.heads import (
    PRESET_SETTINGS,
    HeadEntry,
    HeadGroup,
    HeadSelection,
    HeadSelectionError,
    is_notation,
    short_repr,
)
from pipelines.files import write_atomically  # re-exported: the tools import it from here
from pipelines.loading import SETTINGS_FILE, ModelFolderError, folder_recommendations

__all__ = [
    "ASSETS", "DEFAULT_MODEL", "UPFUSION_MODEL", "DTYPES", "PRESETS", "OutputError", "Preset", "assets_folder",
    "check_model", "check_structured", "check_writable_folder", "folder_heads_per_layer", "image_record", "list_presets", "model_call_extras",
    "model_name", "output_images", "png_parameters", "png_target", "read_png_record", "read_presets",
    "recommended_call", "recommended_settings", "record_call", "record_model", "record_parameters", "resolve_heads",
    "save_png", "structured_support", "Vocabulary", "model_vocabulary", "write_atomically", "takes_true_cfg",
    "with_true_cfg", "pipeline_call", "search_with_true_cfg", "explicit_over_preset", "preset_entries",
]  # fmt: skip

ASSETS_VARIABLE = "HEADHUNTER_ASSETS"


def assets_folder() -> Path:
    """The assets folder (toy models, presets): $HEADHUNTER_ASSETS, else `assets/` of the source checkout.

    A wheel does not carry the toy models (60 MB); an installed package without a checkout is told how to get
    them instead of failing later on a missing path."""
    configured = os.environ.get(ASSETS_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parent.parent / "assets"


def require_assets() -> Path:
    """The assets folder, or a FileNotFoundError that says how to get it."""
    folder = assets_folder()
    if not (folder / "presets").is_dir():
        raise FileNotFoundError(
            f"the project's assets (toy models, head presets) are not at {folder}: clone the repository and "
            f"install it with `pip install -e .`, or set {ASSETS_VARIABLE} to its assets/ folder; real models "
            "are passed with --model <hub id or folder>"
        )
    return folder


ASSETS = assets_folder()
DEFAULT_MODEL = ASSETS / "toy-sd3"
UPFUSION_MODEL = ASSETS / "toy-upfusion"
PRESETS = ASSETS / "presets"
DTYPES = ("float32", "float16", "bfloat16")


SAMPLING_KEYS = (
    "num_inference_steps",
    "guidance_scale",
    "true_cfg_scale",
    "height",
    "width",
    "max_sequence_length",
)


def recommended_settings(model: str | Path) -> dict:
    """Sampling defaults recorded in a model folder (toy models: toyworld.json, read and checked by
    `pipelines.loading.folder_recommendations`, as the pipelines read it), or {} for other models."""
    recorded = folder_recommendations(model)
    return {k: recorded[k] for k in SAMPLING_KEYS if k in recorded}


def model_call_extras(model: str | Path) -> dict:
    """Call arguments a toy model needs beyond steps/CFG/size: its T5 length and, for FLUX, true CFG with an
    empty negative prompt (the toy FLUX model is not guidance-distilled)."""
    settings = recommended_settings(model)
    extras = {k: settings[k] for k in ("max_sequence_length", "true_cfg_scale") if k in settings}
    if "true_cfg_scale" in extras:
        extras["negative_prompt"] = ""
    return extras


def takes_true_cfg(pipe) -> bool:
    """Whether `pipe` does its CFG through `true_cfg_scale` and ignores `guidance_scale`: a pipeline whose CFG
    argument is `true_cfg_scale` (FLUX.1, Qwen-Image) on a denoiser without a guidance embedding (Qwen-Image,
    FLUX.1 schnell, the toy FLUX). FLUX.1 dev keeps `guidance_scale` as its distilled guidance."""
    from guidance.swap import denoiser_of

    if getattr(type(pipe), "_cfg_argument", None) != "true_cfg_scale":
        return False
    return not getattr(denoiser_of(pipe).config, "guidance_embeds", False)


def with_true_cfg(call: dict, pipe) -> dict:
    """`call` with the front ends' one CFG scale, `guidance_scale`, where `pipe` takes it: on a pipeline that
    `takes_true_cfg` it is copied to `true_cfg_scale` (with an empty negative prompt where none is given, which
    turns that CFG on), so the value a user sets is the one sampled and recorded (before, the folder's recorded
    `true_cfg_scale` won and the flag or slider changed nothing). Other pipelines: `call` as it is."""
    if "guidance_scale" not in call or not takes_true_cfg(pipe):
        return call
    out = dict(call, true_cfg_scale=call["guidance_scale"])
    if out.get("negative_prompt") is None:
        out["negative_prompt"] = ""
    return out


def pipeline_call(call: dict, pipe) -> dict:
    """The arguments `pipe` gets for a `with_true_cfg` call: without `guidance_scale` where `pipe` ignores it
    (Qwen-Image would print a notice that it does); it stays in the record."""
    if "guidance_scale" in call and takes_true_cfg(pipe):
        return {k: v for k, v in call.items() if k != "guidance_scale"}
    return call


def search_with_true_cfg(settings, pipe):
    """A head search's `SearchSettings` where `pipe` `takes_true_cfg`: the search's CFG also as `true_cfg_scale`
    in its extra call arguments (the CLI's and the demo's searches)."""
    if not takes_true_cfg(pipe):
        return settings
    extra = with_true_cfg({**settings.extra, "guidance_scale": settings.guidance_scale}, pipe)
    return replace(settings, extra={k: v for k, v in extra.items() if k != "guidance_scale"})


def recommended_call(model: str | Path, steps: int = 20, guidance_scale: float = 5.0) -> dict:
    """The call arguments a model folder recommends: steps, CFG (these defaults where it records none), its
    recorded image size (FluxPipeline's default is 1024 px whatever the model was trained at) and
    `model_call_extras`."""
    settings = recommended_settings(model)
    size = {k: settings[k] for k in ("height", "width") if k in settings}
    return dict(
        num_inference_steps=settings.get("num_inference_steps", steps),
        guidance_scale=settings.get("guidance_scale", guidance_scale),
        **size,
        **model_call_extras(model),
    )


# -------------------------------------------------------------------------------------------------------------
# What a toy model was trained on: the grammar its captions came from (toyworld.json "grammar")
# -------------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+|[0-9]+", re.UNICODE)


@dataclass(frozen=True)
class Vocabulary:
    """The words and prompts a model was trained on, read from its folder (`model_vocabulary`): the grammar of
    the toy world's captions, recorded by toyworld/grammar_record.py. `examples` are prompts the grammar writes, of
    colour-shape pairs seen in training, that the model draws fully correct on at least half of the seeds it was
    measured on (`example_scores`)."""

    words: tuple[str, ...]
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: tuple[str, ...]
    styles: tuple[str, ...]
    positions: tuple[str, ...]  # position phrases ("on the left", ...)
    relations: tuple[str, ...]
    backgrounds: tuple[str, ...]
    examples: tuple[str, ...]
    held_out_pairs: tuple[tuple[str, str], ...]  # colour-shape pairs never shown together in training
    templates: tuple[str, ...] = ()
    # measured on the model, per example: {"correct": share of fully correct images, "binding": ..., "seeds": n}
    example_scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        """The recorded grammar (toyworld.json's "grammar"); ValueError naming the key that is missing or wrong."""

        def texts(key: str) -> tuple[str, ...]:
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"grammar.{key} must be a list of strings")
            return tuple(value)

        positions = data.get("positions")
        if not isinstance(positions, dict):
            raise ValueError("grammar.positions must map positions to their phrases")
        pairs = data.get("held_out_pairs", [])
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError("grammar.held_out_pairs must be [colour, shape] pairs")
        return cls(
            texts("words"), texts("colors"), texts("shapes"), texts("sizes"), texts("styles"),
            tuple(p for phrases in positions.values() for p in phrases), texts("relations"), texts("backgrounds"),
            texts("examples"), tuple((str(c), str(s)) for c, s in pairs), tuple(data.get("templates", ())),
            {p: dict(data["example_scores"][p]) for p in data["examples"] if p in data.get("example_scores", {})},
        )  # fmt: skip

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of `prompt` (lower-cased; punctuation left out) that no training caption had, in order."""
        known = set(self.words)
        return list(dict.fromkeys(w for w in _WORD.findall(prompt.lower()) if w not in known))

    def problems(self, prompt: str) -> list[str]:
        """What in `prompt` the model was not trained on, in words: unknown words, a shape without one of its
        colours before it ("a white square": white is a background here), a colour-shape pair held out of training."""
        found = [f"{short_repr(w)} (not a word it knows)" for w in self.unknown_words(prompt)]
        words = _WORD.findall(prompt.lower())
        for i, word in enumerate(words):
            if word not in self.shapes:
                continue
            before = [w for w in words[max(0, i - 3) : i] if w not in (*self.sizes, *self.styles, "a", "an")]
            color = before[-1] if before else None
            if color not in self.colors:
                shown = f"{color} {word}" if color in self.words else word
                found.append(
                    f"{short_repr(shown)} (a {word} needs one of its colours: {', '.join(self.colors)})"
                )
            elif (color, word) in self.held_out_pairs:
                found.append(f"'{color} {word}' (held out of training: a pairing it never saw)")
        return found

    def describe(self) -> list[str]:
        """The vocabulary as lines of text (the CLI's `vocabulary` command, help texts)."""
        return [
            f"colours: {', '.join(self.colors)}",
            f"shapes: {', '.join(self.shapes)}",
            f"sizes: {', '.join(self.sizes)}; style: {', '.join(self.styles)}",
            f"positions: {', '.join(self.positions)}",
            f"relations: {', '.join(self.relations)}",
            f"backgrounds: {', '.join(self.backgrounds)}",
            "never seen together in training: " + ", ".join(f"{c} {s}" for c, s in self.held_out_pairs),
            "every word: " + " ".join(self.words),
        ]


def model_vocabulary(model: str | Path) -> Vocabulary | None:
    """The vocabulary a model folder records (the toy models: toyworld.json's "grammar"), or None (real models,
    hub ids, folders that record none). A recorded grammar that cannot be read is a ValueError naming the file."""
    path = Path(model).expanduser() / SETTINGS_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{short_repr(str(path))} cannot be read: {error}") from None
    grammar = data.get("grammar") if isinstance(data, dict) else None
    if grammar is None:
        return None
    try:
        return Vocabulary.from_json(grammar)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{short_repr(str(path))}: {error}") from None


@dataclass(frozen=True)
class Preset:
    """One file of the presets folder: its name and selection, or `problem` (why it cannot be used)."""

    name: str
    path: Path
    selection: HeadSelection | None = None
    problem: str | None = None


def read_presets(folder: Path | None = None) -> list[Preset]:
    """Every `*.json` of the presets folder (default `PRESETS`), sorted by name, each read alone: one that
    cannot be read, is not strict JSON, is not a valid preset or is a link out of the folder comes back with its
    `problem` (naming the file and the reason) instead of taking the others down."""
    folder = PRESETS if folder is None else Path(folder)
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError as error:
        raise HeadSelectionError(
            f"presets folder {str(folder)!r} cannot be read: {error.strerror or error}"
        ) from None
    return [_read_preset(path, folder) for path in paths]


def _read_preset(path: Path, folder: Path) -> Preset:
    try:
        _refuse_link_out(path, folder)
        selection = HeadSelection.load(path, path.name)
        selection.check(path.name)
    except HeadSelectionError as error:
        return Preset(path.stem, path, problem=str(error))
    return Preset(path.stem, path, selection)


def _refuse_link_out(path: Path, folder: Path) -> None:
    """A preset file that is a symbolic link to something outside the presets folder is refused."""
    try:
        if not path.is_symlink() or path.resolve().is_relative_to(folder.resolve()):
            return
        target = path.resolve()
    except (OSError, RuntimeError):  # a loop of links
        target = "a loop of links"
    raise HeadSelectionError(f"{path.name}: a link out of the presets folder (to {short_repr(str(target))})")


def list_presets(folder: Path | None = None) -> list[tuple[str, dict]]:
    """(file stem, preset JSON) for every usable preset file in `folder` (default `PRESETS`), sorted by name;
    broken ones are left out (`read_presets` reports them)."""
    return [(p.name, p.selection.to_json()) for p in read_presets(folder) if p.selection is not None]


PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_LOOKS_LIKE_HEAD = re.compile(r"L-?[0-9]", re.IGNORECASE | re.ASCII)


def resolve_heads(value, parameter: str = "pag_heads", folder: Path | None = None):
    """A head value in the order heads -> preset name -> path: notation (and non-strings) pass through, a preset
    name (a file stem in `folder`, default `PRESETS`) becomes its path (refused if it is a link out of the
    folder), a `.json` value passes through as a path (its loader reports what is wrong); any other name is
    refused here, naming the presets."""
    folder = PRESETS if folder is None else Path(folder)
    if not isinstance(value, str) or not value.strip() or is_notation(value):
        return value
    name = value.strip()
    if PRESET_NAME.fullmatch(name) and (folder / f"{name}.json").is_file():
        try:
            _refuse_link_out(folder / f"{name}.json", folder)
        except HeadSelectionError as error:
            raise HeadSelectionError(f"{parameter}={name!r}: preset {error}") from None
        return str(folder / f"{name}.json")
    if name.lower().endswith(".json") or not PRESET_NAME.fullmatch(name) or _LOOKS_LIKE_HEAD.match(name):
        return value  # a path, or notation with a mistake: HeadSelection.parse names it
    raise HeadSelectionError(
        f"{parameter}={short_repr(value)} is neither heads such as 'L1H10,L5H3' nor a preset name; presets: "
        f"{', '.join(p.stem for p in sorted(folder.glob('*.json')))} (or pass a preset .json file)"
    )


# -------------------------------------------------------------------------------------------------------------
# Models and outputs, checked before any work
# -------------------------------------------------------------------------------------------------------------


class OutputError(ValueError):
    """An output or model path that cannot be used; the message names the flag, the path and why."""


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?", re.ASCII)


def looks_like_path(value: str) -> bool:
    """A model value meant as a folder: starts with '.', '/' or '~', has two separators, or its first part exists."""
    first = value.split(os.sep, 1)[0]
    return (
        value.startswith((".", os.sep, "~"))
        or value.count(os.sep) >= 2
        or (os.sep in value and _exists(first))
    )


def _exists(path: str | Path) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # a name too long, or not a path at all
        return False


def check_model(value: str, parameter: str = "--model") -> str:
    """A model folder (with model_index.json) or a hub id, checked without touching the network; a folder's
    problems are ModelFolderError (its components are checked when it loads: `pipelines.loading`)."""
    if not isinstance(value, str) or not value.strip():
        raise OutputError(f"{parameter}={short_repr(value)}: give a model folder or a hub id")
    if _exists(value) or looks_like_path(value):
        folder = Path(value).expanduser()
        if not _exists(folder):
            raise ModelFolderError(
                f"{parameter} {value!r}: no such folder; pass the folder that holds model_index.json, or a hub id"
            )
        if not folder.is_dir():
            raise ModelFolderError(
                f"{parameter} {value!r} is a file, not a folder; pass the folder that holds model_index.json"
            )
        if not (folder / "model_index.json").is_file():
            raise ModelFolderError(
                f"{parameter} {value!r} is a folder without model_index.json (not a diffusers model; empty, or a "
                "component's folder); pass the pipeline's folder, the one save_pretrained wrote"
            )
        return value
    if not _HUB_ID.fullmatch(value):
        raise OutputError(
            f"{parameter} {short_repr(value)} is neither a folder nor a hub id such as 'org/model'; no such folder"
        )
    return value


def folder_heads_per_layer(model: str) -> dict | None:
    """The attention heads of a local model folder's denoiser (`heads_layout(...).heads_per_layer`), read before any
    weight loads: the denoiser is built from its config on the meta device. None for a hub id, or a folder whose
    denoiser cannot be built so (its heads are then known once the model has loaded)."""
    import importlib

    from pipelines.loading import model_index

    if not _exists(model):
        return None
    try:
        index = model_index(model)
        component = "unet" if "unet" in index else "transformer"
        library, class_name = index[component]
        cls = getattr(importlib.import_module(library), class_name)
        import torch

        from guidance.adapters import heads_layout

        with torch.device("meta"):
            denoiser = cls.from_config(cls.load_config(model, subfolder=component))
        return heads_layout(denoiser).heads_per_layer
    except Exception:  # noqa: BLE001 (an unusual folder: its heads are checked once the model has loaded)
        return None


@dataclass(frozen=True)
class StructuredSupport:
    """What a model's family allows of structured cross-attention (`structured_support`)."""

    family: str  # model_index.json's `_class_name`
    modes: tuple[str, ...]  # the `structured` modes it takes; () for none
    with_pag: bool  # whether a structured call may use pag_heads too (not on the SD3 port)


def structured_support(model: str) -> StructuredSupport:
    """Read from the model's model_index.json before it loads: SD1.x/2.x and SDXL take every mode with SoftPAG,
    SD3 key-value only (the experimental MMDiT port) without pag_heads, other families none."""
    from pipelines.headhunter import pipeline_class
    from pipelines.loading import model_index
    from pipelines.structured import StructuredSD3Mixin, structured_modes

    family = model_index(model).get("_class_name", "?")
    cls = pipeline_class(family)
    return StructuredSupport(family, structured_modes(cls), not issubclass(cls, StructuredSD3Mixin))


def check_structured(
    mode: str | None, support: StructuredSupport, pag_heads=None, parameter: str = "structured"
) -> str | None:
    """The mode if the model's family allows it (and with `pag_heads` where they are given), else
    StructuredError naming the parameter, the family and what is allowed there."""
    mode = STRUCTURED_SETTINGS["structured"].check(mode, StructuredError, parameter)
    if mode is None:
        return None
    if mode not in support.modes:
        allowed = " or ".join([*(repr(m) for m in support.modes), "off"])
        raise StructuredError(
            f"{parameter} {mode!r} is not available for this model's family ({support.family}); allowed there: "
            f"{allowed} (structured cross-attention: SD1.x/2.x and SDXL, key-value or conjunction; SD3, key-value "
            "only, an experimental port)"
        )
    if pag_heads and not support.with_pag:
        raise StructuredError(
            f"{parameter} {mode!r} does not combine with pag_heads on this model's family ({support.family}) yet; "
            "use one of them"
        )
    return mode


def check_writable_folder(folder: str | Path, parameter: str = "--out") -> Path:
    """The folder (created later if missing): refused if it or an ancestor is a file, or it cannot be written."""
    path = Path(folder).expanduser()
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{parameter} {str(folder)!r} is a file, not a folder")
        existing = path.absolute()
        while not existing.exists():
            existing = existing.parent
    except OSError as error:
        raise OutputError(f"{parameter} {short_repr(str(folder))}: {error.strerror or error}") from None
    if not existing.is_dir():
        raise OutputError(f"{parameter} {str(folder)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{parameter} {str(folder)!r}: {str(existing)!r} is not writable")
    return path


def png_target(
    out: str, name: str | None = None, overwrite: bool = False, suffixes: tuple[str, ...] = ()
) -> Path:
    """Where `generate` writes: `--out` a .png file, or a folder with `--name` (default 'image') + '.png'.

    Never overwrites without `overwrite`: a named file that exists is refused; the default name is numbered
    (image-1.png, ...). `suffixes` are companion files (e.g. '-unguided') that must be free too."""
    path = Path(out).expanduser()
    if path.suffix.lower() == ".png":
        if name is not None:
            raise OutputError(f"--name {name!r} goes with a folder --out, not with the file {out!r}")
        folder, target, named = path.parent, path, True
    elif path.suffix and not path.is_dir():
        raise OutputError(f"--out {out!r} must be a folder or a .png file")
    else:
        folder, target, named = path, path / f"{_file_stem(name or 'image')}.png", name is not None
    check_writable_folder(folder, "--out")

    def targets(t: Path) -> list[Path]:
        return [t, *(t.with_name(t.stem + s + ".png") for s in suffixes)]

    if any(t.is_dir() for t in targets(target)):
        raise OutputError(f"--out: {str(target)!r} is a folder")
    if overwrite or not any(t.exists() for t in targets(target)):
        return target
    if named:
        raise OutputError(f"--out: {str(target)!r} exists; pass --overwrite or choose another --name / --out")
    n = 1
    while any(t.exists() for t in targets(target.with_name(f"{target.stem}-{n}.png"))):
        n += 1
    return target.with_name(f"{target.stem}-{n}.png")


def _file_stem(name: str) -> str:
    """A --name value: a plain file name without folders."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or os.sep in name
        or not name.isprintable()
        or len(name) > 200
    ):
        raise OutputError(
            f"--name {short_repr(name)} must be a plain file name (no folders, at most 200 characters)"
        )
    return name.removesuffix(".png")


def png_parameters(prompt: str, negative: str | None, settings: dict) -> str:
    """The A1111-style `parameters` text: prompt, negative prompt, then `key: value` pairs."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {v}" for k, v in settings.items() if v is not None))
    return "\n".join(lines)


VIDEO_FRAME_MS = 125  # frame duration of a video written as an animated PNG (8 frames per second)


def save_png(image, path: Path, parameters: str, settings: dict) -> None:
    """Write a PNG with `parameters` and full JSON `headhunter` text chunks (`write_atomically`); a list of
    frames (a video pipeline's output) is written as one animated PNG, its first frame what viewers without
    animation show."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("headhunter", json.dumps(settings, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, list | tuple):
        first, *rest = image
        options = dict(save_all=True, append_images=rest, duration=VIDEO_FRAME_MS, loop=0) if rest else {}
        write_atomically(path, lambda f: first.save(f, format="PNG", pnginfo=info, **options))
        return
    write_atomically(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def output_images(output) -> list:
    """The pictures of a pipeline's output, one per prompt: its `images`, or for a video pipeline (`frames`) each
    video as a list of PIL frames."""
    import numpy as np
    from PIL import Image

    if hasattr(output, "images"):
        return list(output.images)
    videos = []
    for video in output.frames:
        if isinstance(video, list):  # output_type="pil"
            videos.append(list(video))
            continue
        array = video.detach().float().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
        if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(0, 2, 3, 1)  # (frames, channels, h, w) -> (frames, h, w, channels)
        frames = (np.clip(array, 0, 1) * 255).round().astype("uint8")
        videos.append([Image.fromarray(frame) for frame in frames])
    return videos


# -------------------------------------------------------------------------------------------------------------
# What made an image: one record for every front end (PNG chunks, batch manifests, the demo's gallery)
# -------------------------------------------------------------------------------------------------------------


def model_name(model: str | Path) -> str:
    """The model as the user named it: a hub id as given, a folder inside the assets as `assets/...`, any other
    folder relative to the working directory (`./models/mine`, `../mine`); never an absolute path of this machine."""
    text = str(model)
    if not (_exists(text) or looks_like_path(text)):
        return text
    path = Path(os.path.abspath(Path(text).expanduser()))
    assets = Path(os.path.abspath(ASSETS))
    if path.is_relative_to(assets):
        return str("assets" / path.relative_to(assets))
    relative = os.path.relpath(path)
    # "./models/mine", not "models/mine": that would read as a hub id where the folder is missing
    return relative if relative.startswith(".") else f".{os.sep}{relative}"


def image_record(
    model: str | Path, call: dict, pag: dict | None = None, preset: str | Path | None = None
) -> dict:
    """What made one image, enough to make it again (`record_call`).

    `call`: the pipeline's arguments with `prompt` and `seed` (None values are left out). `pag`: the SoftPAG
    keywords it was called with (`pag_heads` as notation, a preset file or a HeadSelection; missing ones take
    their defaults, as in the pipeline). `preset`: the preset the heads came from (a name in `PRESETS`, a file,
    or a label such as "custom"); by default the `pag_heads` file, if it is one. Recorded: the model by
    `model_name`, every call argument, and for guided images every head with the u it had, every group with
    the scale that applied (a preset's own w, not `pag_scale`), identity, window, `pag_every` and `pag_branch` (where
    not the default), preset name and sha256. Structured images: `structured` and `noun_phrases` (the phrases the
    call structured, found by the parser) are call arguments like the others."""
    record = {"model": model_name(model), **{k: v for k, v in call.items() if v is not None}}
    heads = (pag or {}).get("pag_heads")
    if heads is None or (isinstance(heads, str) and not heads.strip()):
        return {**record, "guidance": "none"}
    return {
        **record,
        **_guidance(HeadSelection.parse(heads), pag),
        **preset_entries(heads if preset is None else preset),
    }


def explicit_over_preset(pag: dict, explicit: set[str]) -> tuple[dict, dict]:
    """(SoftPAG keywords, record entries) of a call whose heads may be a preset with recommended `"settings"`, with
    the settings given explicitly (`explicit`: their names) kept even where they equal the default: the library
    fills a preset's settings into the arguments left at their defaults and cannot tell `pag_stop=1.0` given from
    left, so the preset's other settings are passed explicitly and its heads without settings; the record names
    the preset still (`preset_entries`). Other calls: (`pag`, {})."""
    heads = pag.get("pag_heads")
    if (
        not set(explicit) & set(PRESET_SETTINGS)
        or not isinstance(heads, str)
        or not heads.strip()
        or is_notation(heads)
    ):
        return pag, {}  # nothing given that a preset could recommend: no preset file read
    selection = HeadSelection.parse(resolve_heads(heads))  # a preset's name or file
    recommended = selection.metadata.get("settings", {})
    if not set(recommended) & set(explicit):
        return pag, {}
    out = {**pag, **{k: v for k, v in recommended.items() if k not in explicit}}
    return {**out, "pag_heads": selection.without_settings()}, preset_entries(heads)


# Settings added after the record format: recorded only where they differ from their default, so that the
# records written before them (absent = default) still describe their images exactly.
LATER_SETTINGS = ("pag_every", "pag_branch")


def _guidance(selection: HeadSelection, pag: dict) -> dict:
    """The guided part of a record: the selection as it applied (every u and group scale written out, and the
    settings a preset recommended where the call left them at their defaults: `SoftPAGConfig.from_preset`)."""
    given = {k: s.default if pag.get(k) is None else pag[k] for k, s in SOFTPAG_SETTINGS.items()}
    filled = SoftPAGConfig(heads=selection, identity=given["pag_identity"], start=given["pag_start"],
                           stop=given["pag_stop"], every=given["pag_every"], branch=given["pag_branch"])  # fmt: skip
    given.update({name: getattr(filled, name.removeprefix("pag_")) for name in filled.from_preset})
    w, u = given["pag_scale"], given["pag_strength"]
    scales = (
        list(w)
        if isinstance(w, list | tuple)
        else [w if g.scale is None else g.scale for g in selection.groups]
    )
    groups = [
        {"name": g.name, "scale": float(scale),
         "heads": [{"layer": h.layer, "head": h.head, "attention": h.attention,
                    "u": float(u if h.strength is None else h.strength)} for h in g.heads]}
        for g, scale in zip(selection.groups, scales, strict=True)
    ]  # fmt: skip
    return {
        "guidance": "softpag",
        "pag_heads": str(_selection(groups)),
        "pag_groups": groups,
        "pag_identity": given["pag_identity"],
        "pag_start": float(given["pag_start"]),
        "pag_stop": float(given["pag_stop"]),
        "pag_shared_prefix": given["pag_shared_prefix"],
        **{k: given[k] for k in LATER_SETTINGS if given[k] != SOFTPAG_SETTINGS[k].default},
    }


def _selection(groups: list[dict]) -> HeadSelection:
    """The recorded groups (`pag_groups`) as a selection: every head's u and every group's scale set."""
    return HeadSelection(tuple(
        HeadGroup(tuple(HeadEntry(h["layer"], h["head"], h["u"], h["attention"]) for h in g["heads"]), g["name"],
                  g["scale"])
        for g in groups
    ))  # fmt: skip


def preset_entries(value) -> dict:
    """`pag_preset` (its name) and `pag_preset_sha256` (of its file) for a preset name, file or label."""
    if not isinstance(value, str | os.PathLike) or (isinstance(value, str) and is_notation(value)):
        return {}
    text = str(value).strip()
    file = Path(text).expanduser() if text.lower().endswith(".json") else PRESETS / f"{text}.json"
    if not PRESET_NAME.fullmatch(file.stem) or not file.is_file():
        return {"pag_preset": text}
    return {"pag_preset": file.stem, "pag_preset_sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


# The recorded keys that are pipeline arguments (`record_call`); every front end's call uses only these.
RECORDED_CALL_KEYS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "height", "width",
                      "true_cfg_scale", "max_sequence_length", "pag_identity", "pag_start", "pag_stop",
                      "pag_shared_prefix", "pag_every", "pag_branch", "structured", "noun_phrases")  # fmt: skip


def record_call(record: dict) -> dict:
    """The pipeline keywords that make a recorded image (`image_record`) again, but the generator: call
    `pipe(generator=torch.Generator().manual_seed(record["seed"]), **record_call(record))` on `record["model"]`."""
    call = {k: record[k] for k in RECORDED_CALL_KEYS if k in record}
    if not call.get("noun_phrases"):  # none found: the structured call parses the prompt (and warns)
        call.pop("noun_phrases", None)
    if record.get("guidance") == "softpag":
        call["pag_heads"] = _selection(record["pag_groups"])
    return call


RECORD_CHUNK = "headhunter"  # the PNG text chunk that holds an image's record (`save_png`)


def read_png_record(path: str | Path, parameter: str = "--from-png") -> dict:
    """The record (`image_record`) in a PNG written by `headhunter generate`, `batch` or the demo, checked so that
    `record_call` can use it; OutputError naming `parameter`, the file and what is wrong otherwise."""
    from PIL import Image, UnidentifiedImageError

    shown = f"{parameter} {short_repr(str(path))}"
    try:
        if not Path(path).is_file():
            raise OutputError(f"{shown}: no such file")
        with Image.open(path) as image:
            if image.format != "PNG":
                raise OutputError(f"{shown} is a {image.format} image, not a PNG with a headhunter record")
            text = dict(getattr(image, "text", {}) or {})
    except (UnidentifiedImageError, OSError) as error:
        raise OutputError(f"{shown} cannot be read as an image ({short_repr(str(error))})") from None
    if RECORD_CHUNK not in text:
        raise OutputError(
            f"{shown} holds no headhunter record (the PNGs of `headhunter generate`, `batch` and the demo carry one "
            "in a text chunk; this one has none, or its text chunks were removed), so it cannot be made again"
        )
    try:
        record = json.loads(text[RECORD_CHUNK])
    except (json.JSONDecodeError, RecursionError) as error:
        raise OutputError(f"{shown}: its headhunter record is damaged (not valid JSON: {error})") from None
    if isinstance(record, dict) and "upfusion" in record:
        raise OutputError(
            f"{shown} is a novel view (`headhunter views`), not an image of `generate` or `batch`"
        )
    missing = [k for k in ("model", "prompt", "seed") if not isinstance(record, dict) or k not in record]
    if missing:
        raise OutputError(f"{shown}: its headhunter record is damaged (no {', '.join(map(repr, missing))})")
    try:
        record_call(record)
        if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
            raise TypeError(f"seed {short_repr(record['seed'])} is not an integer")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise OutputError(f"{shown}: its headhunter record is damaged ({short_repr(str(error))})") from None
    return record


def record_model(record: dict) -> str:
    """The model to load for a record: a shipped model (`assets/...`) from this machine's assets folder, any
    other as recorded (a hub id, or a folder relative to the working directory)."""
    model = str(record["model"])
    if model.startswith("assets/") and not _exists(model):
        return str(ASSETS / model.removeprefix("assets/"))
    return model


def record_parameters(record: dict) -> str:
    """A record's A1111-style `parameters` text; its groups as `pag_group_scales: name=w ...`."""
    flat = {k: v for k, v in record.items() if k not in ("prompt", "negative_prompt", "pag_groups")}
    if "pag_groups" in record:
        flat["pag_group_scales"] = " ".join(f"{g['name']}={g['scale']:g}" for g in record["pag_groups"])
    return png_parameters(record["prompt"], record.get("negative_prompt"), flat)
