"""Settings and files shared by the tools (CLI, batch jobs, demo, benchmarks): where the assets are, a model
folder's recommended sampling settings, head presets, checks of model and output paths, and PNG metadata."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from guidance.heads import HeadSelectionError, is_notation, short_repr

__all__ = [
    "ASSETS", "DEFAULT_MODEL", "UPFUSION_MODEL", "DTYPES", "PRESETS", "OutputError", "assets_folder", "check_model",
    "check_writable_folder", "list_presets", "model_call_extras", "png_parameters", "png_target",
    "recommended_call", "recommended_settings", "resolve_heads", "save_png",
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
SETTINGS_FILE = "toyworld.json"  # recommended sampling settings written next to a toy model's weights
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
    """Sampling defaults recorded in a model folder (toy models: toyworld.json), or {} for other models."""
    path = Path(model) / SETTINGS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {k: data[k] for k in SAMPLING_KEYS if k in data}


def model_call_extras(model: str | Path) -> dict:
    """Call arguments a toy model needs beyond steps/CFG/size: its T5 length and, for FLUX, true CFG with an
    empty negative prompt (the toy FLUX model is not guidance-distilled)."""
    settings = recommended_settings(model)
    extras = {k: settings[k] for k in ("max_sequence_length", "true_cfg_scale") if k in settings}
    if "true_cfg_scale" in extras:
        extras["negative_prompt"] = ""
    return extras


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


def list_presets(folder: Path = PRESETS) -> list[tuple[str, dict]]:
    """(file stem, preset JSON) for every preset file in `folder`, sorted by name."""
    return [(p.stem, json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_LOOKS_LIKE_HEAD = re.compile(r"L-?[0-9]", re.IGNORECASE | re.ASCII)


def resolve_heads(value, parameter: str = "pag_heads", folder: Path = PRESETS):
    """A head value in the order heads -> preset name -> path: notation (and non-strings) pass through, a preset
    name (a file stem in `folder`) becomes its path, a `.json` value passes through as a path (its loader reports
    what is wrong); any other name is refused here, naming the presets."""
    if not isinstance(value, str) or not value.strip() or is_notation(value):
        return value
    name = value.strip()
    if PRESET_NAME.fullmatch(name) and (folder / f"{name}.json").is_file():
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
    """A model folder (with model_index.json) or a hub id, checked without touching the network."""
    if not isinstance(value, str) or not value.strip():
        raise OutputError(f"{parameter}={short_repr(value)}: give a model folder or a hub id")
    if _exists(value) or looks_like_path(value):
        folder = Path(value).expanduser()
        if not _exists(folder) or not folder.is_dir():
            raise OutputError(f"{parameter} {value!r}: no such folder")
        if not (folder / "model_index.json").is_file():
            raise OutputError(
                f"{parameter} {value!r} is a folder without model_index.json (not a diffusers model)"
            )
        return value
    if not _HUB_ID.fullmatch(value):
        raise OutputError(
            f"{parameter} {short_repr(value)} is neither a folder nor a hub id such as 'org/model'; no such folder"
        )
    return value


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


def save_png(image, path: Path, parameters: str, settings: dict) -> None:
    """Write a PNG with `parameters` and full JSON `headhunter` text chunks, atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("headhunter", json.dumps(settings, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
