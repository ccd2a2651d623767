"""Settings and files shared by the tools (CLI, batch jobs, demo, benchmarks): where the assets are, a model
folder's recommended sampling settings, head presets, and PNG metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = [
    "ASSETS", "DEFAULT_MODEL", "DTYPES", "PRESETS", "assets_folder", "list_presets", "model_call_extras",
    "png_parameters", "recommended_call", "recommended_settings", "resolve_heads", "save_png",
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
    """The call arguments a model folder recommends: steps, CFG (these defaults where it records none) and
    `model_call_extras`."""
    settings = recommended_settings(model)
    return dict(
        num_inference_steps=settings.get("num_inference_steps", steps),
        guidance_scale=settings.get("guidance_scale", guidance_scale),
        **model_call_extras(model),
    )


def list_presets(folder: Path = PRESETS) -> list[tuple[str, dict]]:
    """(file stem, preset JSON) for every preset file in `folder`, sorted by name."""
    return [(p.stem, json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def resolve_heads(value: str | None, folder: Path = PRESETS) -> str | None:
    """A preset name (a file stem in assets/presets) becomes its path; anything else passes through."""
    if value and (folder / f"{value}.json").is_file():
        return str(folder / f"{value}.json")
    return value


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
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
