"""Gradio demo: SoftPAG generation with head selections, guided beside unguided from the same seed; head
search; UpFusion novel views.

python app.py                      # the embedded toy SD3 model, on http://127.0.0.1:7860, no network
python app.py --model stabilityai/stable-diffusion-3-medium-diffusers --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import numbers
import os
import random
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LOG = logging.getLogger("headhunter.app")

# ------------------------------------------------------------------------------------------------------------
# A quiet console: known library messages dropped where they are emitted (before the libraries load)
# ------------------------------------------------------------------------------------------------------------

from pipelines.console import before_loading, quiet_console  # noqa: E402

quiet_console()  # the libraries' notices and loading bars off (pipelines/console.py, as in the CLI) ...
before_loading()  # ... installed now, before gradio and diffusers are imported

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from guidance import SOFTPAG_SETTINGS, HeadSelection, HeadSelectionError, SoftPAGError  # noqa: E402
from guidance.adapters import heads_layout  # noqa: E402
from guidance.heads import HeadEntry, HeadGroup, printable, short_repr  # noqa: E402
from guidance.swap import denoiser_of  # noqa: E402
from pipelines import HeadHunterPipeline  # noqa: E402
from pipelines.loading import ModelFolderError  # noqa: E402
from pipelines.settings import (  # noqa: E402
    ASSETS,
    DEFAULT_MODEL,
    LATER_SETTINGS,
    PRESETS,
    model_call_extras,
    png_parameters,
    read_presets,
    recommended_settings,
    save_png,
)

PAG = {name.removeprefix("pag_"): setting for name, setting in SOFTPAG_SETTINGS.items()}

CUSTOM = "custom"
DEFAULT_PRESET = (
    "toy-sd3-dark"  # the one measured help on the toy SD3 (docs/toyworld.md: darker, fully correct +0.040)
)
MAX_PRESET_BYTES = 256 * 1024
MAX_PROMPT_CHARS = 2000
SHOWN_PX = 512  # small images are shown enlarged (nearest neighbour) to about this size
DIFFERENCE_GAIN = 4
GALLERY_KEEP = 24

SEARCH_OBJECTIVES = (
    "toy-quality",
    "toy-fidelity",
    "toy-dark",
    "toy-outlined",
    "saturation",
    "brightness",
    "contrast",
    "sharpness",
)
MAX_SEARCH_PROMPTS, MAX_SEARCH_SEEDS, MAX_K, MAX_ROUNDS = 8, 4, 8, 3
SEARCH_USE_STRENGTH = 0.5  # the paper: search with u = 1, use about 0.5

# Prompts the toy models were trained on (the toy world's caption grammar); shown where the loaded model's
# vocabulary holds every word.
EXAMPLE_PROMPTS = (
    "a red circle on the left and a blue square on the right",
    "a large green square",
    "a small yellow triangle at the top",
    "a purple circle in the center on a dark background",
    "an outlined white square at the bottom",
    "a blue triangle at the top, a red circle in the center and a green square at the bottom",
)

HELP = {
    "prompt": "What to draw. The toy model knows only the words listed under 'Vocabulary'.",
    "negative": "What to steer away from (classifier-free guidance). Usually empty.",
    "seed": "The random start. The same seed and settings give the same image; -1 picks a new one.",
    "steps": "Denoising steps. More is slower and usually a little cleaner.",
    "width": "Image width in pixels.",
    "height": "Image height in pixels.",
    "cfg": "How closely to follow the prompt (classifier-free guidance). 1 = off.",
    "preset": "Saved head selections that work with this model. Picking one fills the heads and w below; "
    "editing them turns the selection into 'custom'.",
    "heads": "Which attention heads to weaken: L<layer>H<head>, e.g. L1H0 = layer 1, head 0; '=0.5' sets "
    "that head's strength u. 'name: heads; name2: heads' makes groups. Empty: no head guidance.",
    "preset_file": "A preset JSON (for example from the Head search tab). It fills the heads and w.",
}


# ------------------------------------------------------------------------------------------------------------
# Input checks: every bad value is refused with a message that names the input (logged as one line)
# ------------------------------------------------------------------------------------------------------------


class InputError(gr.Error):
    """A refused input: shown to the user, logged as one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)
        LOG.warning("refused: %s", message)


def _real(value) -> bool:
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float (10**400) is no value of ours either
        return False


def whole(label: str, value, low: int, high: int) -> int:
    """`value` as an int if it is a whole number in [low, high], else InputError naming `label`."""
    if not _real(value) or value != int(value) or not low <= value <= high:
        raise InputError(
            f"{label}: {short_repr(value)} is not allowed; use a whole number from {low} to {high}"
        )
    return int(value)


def number(label: str, value, low: float, high: float) -> float:
    """`value` as a float if it is a finite number in [low, high], else InputError naming `label`."""
    if not _real(value) or not low <= value <= high:
        raise InputError(
            f"{label}: {short_repr(value)} is not allowed; use a number from {low:g} to {high:g}"
        )
    return float(value)


def choice(label: str, value, choices) -> str:
    """`value` if it is one of `choices`, else InputError naming `label`."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{label}: {short_repr(value)} is not one of {', '.join(map(str, choices))}")
    return value


def text(label: str, value, required: bool = False, limit: int = MAX_PROMPT_CHARS) -> str:
    """`value` as stripped text of at most `limit` characters, else InputError naming `label`: not a string,
    a lone surrogate, a control character other than tab and newline (NUL too), too long, or (`required`)
    blank."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(f"{label}: {short_repr(value)} is not text ({type(value).__name__}); give a string")
    if len(value) > limit:
        raise InputError(f"{label}: give text of at most {limit} characters (got {len(value)})")
    bad = next((i for i, c in enumerate(value) if (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127), None)
    if bad is not None:
        raise InputError(
            f"{label}: contains a NUL/control character ({value[bad]!r} at position {bad}); remove it"
        )
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InputError(f"{label}: contains a lone surrogate (not valid Unicode text); send UTF-8 text")
    if required and not value.strip():
        raise InputError(f"{label}: write a {label.lower()}")
    return value.strip()


def setting(name: str, label: str, value):
    """A SoftPAG setting checked against `SOFTPAG_SETTINGS` (the source of its range), named as in the UI."""
    s = SOFTPAG_SETTINGS[name]
    if s.kind == "choice":
        return choice(label, value, s.choices)
    if s.kind == "integer":
        return whole(label, value, int(s.low), int(s.high))
    return number(label, value, s.low, s.high)


def raw(component: gr.components.Component) -> gr.components.Component:
    """`component`, with its API values passed to our checks unchanged.

    Gradio's own preprocessing would round 2.5 steps to 2 and refuse out-of-range values without naming the
    input; our checks name it. (An instance attribute: a subclass would make Gradio write a .pyi file.)"""
    component.preprocess = lambda payload: payload
    return component


def Number(**kwargs) -> gr.Number:  # noqa: N802 (used like the component class)
    """A gr.Number checked by us (no rounding: 2.5 steps is refused, not truncated)."""
    return raw(gr.Number(precision=None, **kwargs))


def Slider(*args, **kwargs) -> gr.Slider:  # noqa: N802
    """A gr.Slider checked by us."""
    return raw(gr.Slider(*args, **kwargs))


def Radio(*args, **kwargs) -> gr.Radio:  # noqa: N802
    """A gr.Radio checked by us."""
    return raw(gr.Radio(*args, **kwargs))


def Dropdown(*args, **kwargs) -> gr.Dropdown:  # noqa: N802
    """A gr.Dropdown checked by us."""
    return raw(gr.Dropdown(*args, **kwargs))


def Textbox(*args, **kwargs) -> gr.Textbox:  # noqa: N802
    """A gr.Textbox checked by us (a list is refused, not turned into the text "['a red circle']")."""
    return raw(gr.Textbox(*args, **kwargs))


def Checkbox(*args, **kwargs) -> gr.Checkbox:  # noqa: N802
    """A gr.Checkbox checked by us ("yes" is refused, not read as true)."""
    return raw(gr.Checkbox(*args, **kwargs))


def named(component: gr.components.Component, name: str) -> gr.components.Component:
    """`component`, called `name` in API error messages (where its label is long)."""
    component.api_label = name
    return component


# -- HTTP API payloads: checked before Gradio's own processing, whose errors would reach a client as
# {"error": null} (show_error=False): a path that was never uploaded, a URL, a dict posted as a number ------------


def _api_label(block) -> str:
    return getattr(block, "api_label", None) or block.label or type(block).__name__


def check_file_payload(label: str, payload, multiple: bool, suffixes: tuple[str, ...] = ()) -> None:
    """An upload input's payload: None, or (a list of) files uploaded to this demo, each a regular file in
    Gradio's upload folder (named with one of `suffixes`, where given); never a path elsewhere, a URL (which
    Gradio would fetch), a folder or a link."""
    if payload is None:
        return
    if multiple and not isinstance(payload, list):
        raise InputError(
            f"{label}: {short_repr(payload)} is not a list of uploaded files; upload the files "
            "(gradio_client: [handle_file(path), ...])"
        )
    upload = Path(gr.utils.get_upload_folder()).resolve()
    for i, entry in enumerate(payload if multiple else [payload], start=1):
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str):
            raise InputError(
                f"{label}: file {i} ({short_repr(entry)}) is not an uploaded file; upload it first "
                "(gradio_client: handle_file(path))"
            )
        if re.match(r"[a-z][a-z0-9+.-]*:", path, re.IGNORECASE) and not Path(path).is_absolute():
            raise InputError(
                f"{label}: file {i} is a URL ({short_repr(path)}); this demo reads uploaded files only, "
                "upload the file itself"
            )
        try:
            uploaded = "\x00" not in path and Path(path).resolve().is_relative_to(upload)
            regular = uploaded and Path(path).is_file() and not Path(path).is_symlink()
        except (OSError, ValueError):
            uploaded = regular = False
        if not uploaded:
            raise InputError(
                f"{label}: file {i} ({short_repr(path)}) was not uploaded to this demo; upload it first "
                "(gradio_client: handle_file(path))"
            )
        if not regular:
            raise InputError(
                f"{label}: file {i} ({short_repr(path)}) is not an uploaded file (a folder, a link or gone); "
                "upload it again"
            )
        if suffixes and Path(path).suffix.lower() not in suffixes:
            raise InputError(
                f"{label}: file {i} ({short_repr(Path(path).name)}) is not a {'/'.join(suffixes)} file"
            )


def check_payload(block, payload) -> None:
    """One input's API payload, by its component: the types our event functions' checks expect."""
    label = _api_label(block)
    if isinstance(block, gr.File | gr.Image):
        suffixes = tuple(t.lower() for t in getattr(block, "file_types", None) or () if t.startswith("."))
        check_file_payload(label, payload, getattr(block, "file_count", "single") != "single", suffixes)
        if payload is None:
            return
        try:  # Gradio's own reading of the upload record (keys, `meta`), named here
            block.data_model.model_validate(payload, context={"validate_meta": True})
        except Exception:
            raise InputError(f"{label}: {short_repr(payload)} is not an uploaded file record") from None
        return
    if isinstance(block, gr.Dataset):
        if not isinstance(payload, int) or isinstance(payload, bool) or not 0 <= payload < len(block.samples):
            raise InputError(
                f"{label}: {short_repr(payload)} is not an example number (0 to {len(block.samples) - 1})"
            )
    elif isinstance(block, gr.Checkbox):
        if not isinstance(payload, bool):
            raise InputError(f"{label}: {short_repr(payload)} must be true or false")
    elif isinstance(block, gr.Number | gr.Slider):
        if payload is None or isinstance(payload, dict | list):
            raise InputError(f"{label}: {short_repr(payload)} is not a number; give a number")
    elif isinstance(block, gr.Radio | gr.Dropdown):
        if payload is None or isinstance(payload, dict | list):
            values = [c[1] if isinstance(c, tuple) else c for c in block.choices]
            raise InputError(f"{label}: {short_repr(payload)} is not one of {', '.join(map(str, values))}")
    elif isinstance(payload, dict | list):
        what = "text" if isinstance(block, gr.Textbox) else "allowed here"
        raise InputError(f"{label}: {short_repr(payload)} is not {what}")


def check_api_inputs(app: gr.Blocks) -> gr.Blocks:
    """`app`, with every event's payloads checked by `check_payload` before Gradio processes them; anything
    Gradio still cannot read is refused naming the event instead of reaching the client as {"error": null}."""
    preprocess = app.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        event = f"/{block_fn.api_name or block_fn.name}"
        if not isinstance(inputs, list) or len(inputs) < len(block_fn.inputs):
            raise InputError(f"{event}: give {len(block_fn.inputs)} inputs (got {short_repr(inputs)})")
        for block, payload in zip(block_fn.inputs, inputs, strict=False):
            if not block.stateful:
                check_payload(block, payload)
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except InputError:
            raise
        except gr.Error as error:  # Gradio's own refusal (a file type), named by the event
            raise InputError(f"{event}: {error.message}") from None
        except Exception as error:
            LOG.debug("%s: Gradio could not read the inputs: %s", event, printable(str(error))[:300])
            raise InputError(f"{event}: the inputs could not be read ({type(error).__name__})") from None

    app.preprocess_data = preprocess_data  # an instance attribute, like `raw`
    return app


# ------------------------------------------------------------------------------------------------------------
# The model folder: name, sizes, vocabulary
# ------------------------------------------------------------------------------------------------------------


def display_name(model: str | Path) -> str:
    """The model as the user named it; a local folder is never shown by its absolute path."""
    path = Path(model)
    if not path.is_absolute():
        return str(model)
    for root in (ASSETS.parent, Path.cwd()):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return path.name


@dataclass(frozen=True)
class Sizes:
    """The image sizes a model supports: a multiple in [low, high], or the trained size only (toy models)."""

    native: tuple[int, int]  # (height, width)
    multiple: int
    low: int
    high: int
    trained_only: bool

    def check(self, label: str, value, native: int) -> int:
        """`value` if this model supports it along one side, else InputError naming `label` and the range."""
        if self.trained_only:
            if not _real(value) or value != native:
                raise InputError(
                    f"{label}: {value!r} is not allowed; this toy model makes "
                    f"{self.native[1]}x{self.native[0]} "
                    f"images only (its training size; other sizes give noise)"
                )
            return native
        if (
            not _real(value)
            or value != int(value)
            or not self.low <= value <= self.high
            or value % self.multiple
        ):
            raise InputError(
                f"{label}: {value!r} is not allowed; use a multiple of {self.multiple} from {self.low} to "
                f"{self.high}"
            )
        return int(value)

    def describe(self) -> str:
        """The rule in words."""
        if self.trained_only:
            return f"{self.native[1]}x{self.native[0]} only (the toy model's training size)"
        return f"multiples of {self.multiple} from {self.low} to {self.high}"


def model_sizes(pipe, settings: dict, max_size: int) -> Sizes:
    """What the loaded model can make: toy folders (recorded height and width) their trained size only; SD3's
    positional table limits it to `pos_embed_max_size * patch_size * vae_scale_factor`."""
    denoiser = denoiser_of(pipe)
    patch = getattr(denoiser.config, "patch_size", 1) or 1
    multiple = pipe.vae_scale_factor * patch * (2 if type(pipe).__name__ == "HeadHunterFluxPipeline" else 1)
    high = max_size
    table = getattr(denoiser.config, "pos_embed_max_size", None)
    if table:
        high = min(high, table * patch * pipe.vae_scale_factor)
    high -= high % multiple
    default = pipe.default_sample_size * pipe.vae_scale_factor
    native = (settings.get("height") or default, settings.get("width") or default)
    trained_only = "height" in settings and "width" in settings
    if not trained_only:
        native = tuple(min(max(n - n % multiple, multiple), high) for n in native)
    return Sizes(native, multiple, multiple, high, trained_only)


def vocabulary(model: str | Path) -> list[str]:
    """The whole words of a local model's CLIP vocabulary (not sub-word pieces), or [] for other models."""
    path = Path(model) / "tokenizer" / "vocab.json"
    if not path.is_file():
        return []
    tokens = json.loads(path.read_text())
    words = {t[:-4] for t in tokens if re.fullmatch(r"[a-z]{2,}</w>", t)}
    if len(words) > 5000:  # a real CLIP vocabulary: too long to list
        return []
    # Pieces of longer words ("ack" of "black") are whole-word tokens too: a word ending another is a piece.
    return sorted(w for w in words if not any(o != w and o.endswith(w) for o in words))


def examples_for(words: list[str]) -> list[str]:
    """The example prompts the model can read: all of them for a real model, else those within `words`."""
    if not words:
        return list(EXAMPLE_PROMPTS)
    known = set(words)
    return [p for p in EXAMPLE_PROMPTS if set(re.findall(r"[a-z]+", p)) <= known]


# ------------------------------------------------------------------------------------------------------------
# What guided an image: one record for the PNG chunks, the gallery and the note
# ------------------------------------------------------------------------------------------------------------


def effective_scales(selection: HeadSelection, pag_scale) -> list[float]:
    """The scale each group is guided with (as `guidance.perturbation` resolves them)."""
    if isinstance(pag_scale, list | tuple):
        return [float(s) for s in pag_scale]
    return [float(pag_scale if g.scale is None else g.scale) for g in selection.groups]


def guidance_record(selection: HeadSelection | None, pag_kwargs: dict) -> dict:
    """Everything that guided an image: heads with their own u, each group's scale, identity and window."""
    if selection is None:
        return {"guidance": "none"}
    u = pag_kwargs.get("pag_strength", PAG["strength"].default)
    scales = effective_scales(selection, pag_kwargs.get("pag_scale", PAG["scale"].default))
    groups = [
        {
            "name": g.name,
            "scale": scale,
            "heads": [
                {
                    "layer": h.layer,
                    "head": h.head,
                    "attention": h.attention,
                    "u": float(u if h.strength is None else h.strength),
                }
                for h in g.heads
            ],
        }
        for g, scale in zip(selection.groups, scales, strict=True)
    ]
    return {
        "guidance": "softpag",
        "pag_heads": str(explicit(selection, u)),
        "pag_groups": groups,
        **{
            k: pag_kwargs.get(k, SOFTPAG_SETTINGS[k].default)
            for k in ("pag_identity", "pag_start", "pag_stop")
        },
        **{
            k: pag_kwargs[k]
            for k in LATER_SETTINGS
            if pag_kwargs.get(k, SOFTPAG_SETTINGS[k].default) != SOFTPAG_SETTINGS[k].default
        },
    }


def explicit(selection: HeadSelection, u: float, scale: float | None = None) -> HeadSelection:
    """The selection with every head's u written out (and, with `scale`, every group's scale)."""
    groups = tuple(
        HeadGroup(
            tuple(
                HeadEntry(h.layer, h.head, float(u if h.strength is None else h.strength), h.attention)
                for h in g.heads
            ),
            g.name,
            g.scale if scale is None else scale,
        )
        for g in selection.groups
    )
    return HeadSelection(groups, selection.metadata)


def flat_parameters(record: dict) -> dict:
    """The record for the A1111 `parameters` line: group scales as `name=w`, no nested objects."""
    flat = {k: v for k, v in record.items() if k not in ("pag_groups", "prompt", "negative_prompt")}
    if "pag_groups" in record:
        flat["pag_group_scales"] = " ".join(f"{g['name']}={g['scale']:g}" for g in record["pag_groups"])
    return flat


# ------------------------------------------------------------------------------------------------------------
# Pictures: enlargement, difference, head map
# ------------------------------------------------------------------------------------------------------------


def enlargement(size: tuple[int, int]) -> int:
    """The whole factor that shows an image of `size` at about `SHOWN_PX` (1 for large images)."""
    return max(1, SHOWN_PX // max(size))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour enlargement: every pixel becomes a factor x factor block (no smoothing)."""
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def difference(a: Image.Image, b: Image.Image, gain: int = DIFFERENCE_GAIN) -> Image.Image:
    """|a - b| per channel, brightened `gain` times (black = identical)."""
    delta = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)) * gain
    return Image.fromarray(np.clip(delta, 0, 255).astype(np.uint8))


def _diverging(t: float) -> tuple[int, int, int]:
    """Blue (-1) - white (0) - red (+1)."""
    t = max(-1.0, min(1.0, t))
    fade = int(255 * (1 - abs(t)))
    return (255, fade, fade) if t >= 0 else (fade, fade, 255)


def head_map_png(scores: dict, baseline: float, objective: str, path: Path, cell: int = 22) -> Path:
    """The head map: layers x heads of (score - unguided), a symmetric colour bar centred on 0, a title."""
    layers = sorted({layer for layer, _ in scores})
    heads = sorted({head for _, head in scores})
    finite = [v - baseline for v in scores.values() if math.isfinite(v)]
    span = max((abs(v) for v in finite), default=0.0) or 1e-6
    left, top, bar = 36, 48, 16
    grid_w, grid_h = cell * len(heads), cell * len(layers)
    image = Image.new("RGB", (left + grid_w + 24 + bar + 70, top + max(grid_h, 120) + 34), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), f"Head map: {objective}, each head perturbed alone", fill="black")
    draw.text((6, 22), "colour = score minus unguided (red helps, blue hurts)", fill="black")
    for (layer, head), value in scores.items():
        x, y = left + heads.index(head) * cell, top + layers.index(layer) * cell
        t = (value - baseline) / span if math.isfinite(value) else -1.0
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=_diverging(t))
    for i, head in enumerate(heads):
        draw.text((left + i * cell + 3, top + grid_h + 4), f"H{head}", fill="black")
    for i, layer in enumerate(layers):
        draw.text((4, top + i * cell + 5), f"L{layer}", fill="black")
    bx, height = left + grid_w + 24, max(grid_h, 120)
    for y in range(height):
        draw.line([bx, top + y, bx + bar, top + y], fill=_diverging(1 - 2 * y / (height - 1)))
    for y, value in ((0, span), (height // 2, 0.0), (height - 1, -span)):
        draw.text((bx + bar + 4, top + y - 6), f"{value:+.3g}", fill="black")
    draw.text((bx - 4, top + height + 8), "score - unguided", fill="black")
    image.save(path)
    return path


# ------------------------------------------------------------------------------------------------------------
# The demo: a loaded pipeline and the event functions
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; requests beyond are refused with a message naming the input."""

    max_steps: int = 100
    max_size: int = 1024
    queue_size: int = 16
    concurrency: int = 1


class Stopped(Exception):
    """The user pressed Stop; raised from the step callback so the pipeline restores its processors."""


class Demo:
    """A loaded pipeline plus what the UI needs to know about it."""

    def __init__(self, pipe, model: str | Path, limits: Limits = Limits(), name: str | None = None):
        self.pipe, self.model, self.limits = pipe, str(model), limits
        # The head search's own pipeline: the same components, its own scheduler (diffusers' schedulers keep
        # per-call state; a search and a generation run at the same time).
        self.search_pipe = HeadHunterPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))
        self.search_pipe.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        self.name = name or display_name(model)
        self.denoiser = denoiser_of(pipe)
        self.heads_per_layer = heads_layout(self.denoiser).heads_per_layer
        settings = recommended_settings(model)
        before_loading(settings.get("max_sequence_length"))  # its T5 length by design: no truncation notice
        self.extras = model_call_extras(model)
        self.default_steps = min(settings.get("num_inference_steps", 28), limits.max_steps)
        self.default_cfg = settings.get("guidance_scale", 5.0)
        self.sizes = model_sizes(pipe, settings, limits.max_size)
        self.words = vocabulary(model)
        self.presets = self._compatible_presets()
        self.default_preset = DEFAULT_PRESET if DEFAULT_PRESET in self.presets else CUSTOM
        self._stops: dict[str, threading.Event] = {}

    def _compatible_presets(self) -> dict[str, HeadSelection]:
        """Shipped presets whose heads exist in the loaded model: name -> selection. Each file is read alone;
        broken ones (`read_presets`) are kept in `broken_presets` (name -> why) for the menu's note."""
        found, self.broken_presets = {}, {}
        for preset in read_presets(PRESETS):
            if preset.selection is None:
                self.broken_presets[preset.name] = preset.problem
                continue
            try:
                preset.selection.validate(self.heads_per_layer)
            except HeadSelectionError:
                continue  # made for another model
            found[preset.name] = preset.selection
        return found

    def preset_note(self) -> str:
        """The preset menu's help, naming the preset files that could not be read and why."""
        if not self.broken_presets:
            return HELP["preset"]
        broken = "; ".join(f"{name}: {why}" for name, why in sorted(self.broken_presets.items()))
        return printable(f"{HELP['preset']} Not usable (broken files): {broken}")

    # -- head selections -----------------------------------------------------------------------------------

    def preset_inputs(self, preset: str) -> tuple[str, float]:
        """(heads text with every u written out, w) that reproduce a preset in the inputs; ("", default w) for
        custom."""
        if preset == CUSTOM:
            return "", PAG["scale"].default
        selection = self.presets[choice("Preset", preset, list(self.presets))]
        scales = {g.scale for g in selection.groups if g.scale is not None}
        w = scales.pop() if len(scales) == 1 else PAG["scale"].default
        return str(explicit(selection, PAG["strength"].default)), float(w)

    def choose_preset(self, preset: str):
        """Picking a preset: its heads and w go into the inputs."""
        return self.preset_inputs(choice("Preset", preset, [CUSTOM, *self.presets]))

    def read_preset_file(self, path: str | None):
        """An uploaded preset: its heads and w go into the inputs, and the selection is custom."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        file = Path(path)
        try:
            if file.suffix.lower() != ".json" or file.stat().st_size > MAX_PRESET_BYTES:
                raise InputError("Preset file: upload a .json preset of at most 256 KiB")
        except OSError:
            raise InputError("Preset file: the upload cannot be read; upload it again") from None
        try:  # the shipped presets' checks: strict JSON, bounded depth and size, the preset schema
            selection = HeadSelection.parse(HeadSelection.load(file, "Preset file"), "Preset file")
            selection.validate(self.heads_per_layer, "Preset file")
        except HeadSelectionError as error:
            raise InputError(printable(str(error))) from None
        scales = {g.scale for g in selection.groups if g.scale is not None}
        w = scales.pop() if len(scales) == 1 else PAG["scale"].default
        return str(explicit(selection, PAG["strength"].default)), float(w), CUSTOM

    def selection(self, heads_text: str) -> HeadSelection | None:
        """The typed heads, checked against the loaded model; None when empty."""
        heads_text = text("Heads", heads_text, limit=20_000)
        if not heads_text:
            return None
        try:
            selection = HeadSelection.parse(heads_text, "Heads")
            if heads_text.lower().endswith(".json"):
                raise HeadSelectionError("Heads: write heads such as L1H0, not a file name")
            selection.validate(self.heads_per_layer, "Heads")
        except HeadSelectionError as error:
            raise InputError(str(error)) from None
        return selection

    def preset_label(self, preset: str, selection: HeadSelection | None, pag: dict) -> str:
        """The preset name if the inputs still equal it, else "custom" (the inputs are what guides)."""
        if preset == CUSTOM or preset not in self.presets or selection is None:
            return CUSTOM
        heads, w = self.preset_inputs(preset)
        same = guidance_record(HeadSelection.parse(heads), dict(pag, pag_scale=w)) == guidance_record(
            selection, pag
        )
        return preset if same else CUSTOM

    # -- generation ----------------------------------------------------------------------------------------

    def check_call(self, prompt, negative, seed, steps, width, height, cfg) -> dict:
        """Checked sampling inputs (seed -1 drawn here) as pipeline keywords, before any work."""
        prompt = text("Prompt", prompt, required=True)
        negative = text("Negative prompt", negative)
        steps = whole("Steps", steps, 1, self.limits.max_steps)
        width = self.sizes.check("Width", width, self.sizes.native[1])
        height = self.sizes.check("Height", height, self.sizes.native[0])
        cfg = number("CFG scale", cfg, 1, 30)
        seed = whole("Seed", seed, -1, 2**63 - 1)
        seed = random.randrange(2**31) if seed == -1 else seed
        call = dict(
            self.extras,
            prompt=prompt,
            num_inference_steps=steps,
            height=height,
            width=width,
            guidance_scale=cfg,
            seed=seed,
        )
        if negative:
            call["negative_prompt"] = negative
        return call

    def check_guidance(
        self,
        preset,
        heads,
        pag_scale,
        pag_strength,
        pag_identity,
        pag_start,
        pag_stop,
        pag_every=PAG["every"].default,
        pag_branch=PAG["branch"].default,
    ):
        """(selection or None, pag keywords, preset label) from the inputs, checked before any work.

        With branch "uncond" w is not passed: that branch has no weight of its own (CFG's scale sets the push)."""
        choice("Preset", preset, [CUSTOM, *self.presets])
        pag = dict(
            pag_scale=setting("pag_scale", "PAG scale w", pag_scale),
            pag_strength=setting("pag_strength", "Strength u", pag_strength),
            pag_identity=setting("pag_identity", "Identity", pag_identity),
            pag_start=setting("pag_start", "Start", pag_start),
            pag_stop=setting("pag_stop", "Stop", pag_stop),
            pag_every=setting("pag_every", "Every k steps", pag_every),
            pag_branch=setting("pag_branch", "Perturbed branch", pag_branch),
        )
        if pag["pag_start"] >= pag["pag_stop"]:
            raise InputError(f"Start: {pag['pag_start']:g} must be below Stop ({pag['pag_stop']:g})")
        if pag["pag_branch"] == "uncond":
            del pag["pag_scale"]
        selection = self.selection(heads)
        if selection is None:
            return None, {}, "none"
        return selection, dict(pag, pag_heads=selection), self.preset_label(preset, selection, pag)

    def _sample(self, call: dict, pag: dict, progress, done: int, total: int, stop: threading.Event):
        """One image; the progress bar counts every step of both passes; Stop ends it at the next step."""
        call = dict(call)
        seed = call.pop("seed")

        def on_step(pipe, i, t, kwargs):
            if stop.is_set():
                raise Stopped
            progress((done + i + 1, total), desc="guided" if pag else "unguided", unit="steps")
            return {}

        try:
            return self.pipe(
                generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step, **call, **pag
            ).images[0]
        except (SoftPAGError, HeadSelectionError, ValueError) as error:
            raise InputError(str(error)) from None

    def record(self, call: dict, selection, pag: dict, preset: str) -> dict:
        """What made one image: model by its given name, sampling settings, seed, guidance."""
        record = {"model": self.name, **call, **guidance_record(selection, pag)}
        if selection is not None:
            record["pag_preset"] = preset
        return record

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: float = -1,
        steps: float | None = None,
        width: float | None = None,
        height: float | None = None,
        guidance_scale: float | None = None,
        pag_scale: float = PAG["scale"].default,
        pag_strength: float = PAG["strength"].default,
        pag_identity: str = PAG["identity"].default,
        pag_start: float = PAG["start"].default,
        pag_stop: float = PAG["stop"].default,
        pag_every: int = PAG["every"].default,
        pag_branch: str = PAG["branch"].default,
        preset: str = CUSTOM,
        heads: str = "",
        history: list | None = None,
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ):
        """Guided and unguided images from one seed: comparison, difference, PNG files, gallery, note."""
        call = self.check_call(
            prompt,
            negative_prompt,
            seed,
            self.default_steps if steps is None else steps,
            self.sizes.native[1] if width is None else width,
            self.sizes.native[0] if height is None else height,
            self.default_cfg if guidance_scale is None else guidance_scale,
        )
        selection, pag, label = self.check_guidance(
            preset, heads, pag_scale, pag_strength, pag_identity, pag_start, pag_stop, pag_every, pag_branch
        )
        stop = self._stop_event(request, clear=True)
        passes, steps = (2 if selection else 1), call["num_inference_steps"]
        try:
            images = [
                self._sample(call, p, progress, i * steps, passes * steps, stop)
                for i, p in enumerate([pag, {}][2 - passes :])
            ]
        except Stopped:
            raise InputError("Stopped: generation was stopped before it finished") from None
        records = [self.record(call, selection, pag, label), self.record(call, None, {}, label)][2 - passes :]
        return self._results(images, records, history or [])

    def _stop_event(self, request, clear: bool = False) -> threading.Event:
        key = getattr(request, "session_hash", None) or "local"
        event = self._stops.setdefault(key, threading.Event())
        if clear:
            event.clear()
        return event

    def stop(self, request: gr.Request = None) -> None:
        """Stop this page's running generation at its next step."""
        self._stop_event(request).set()

    def _results(self, images: list, records: list[dict], history: list):
        """The outputs: comparison slider, difference, PNG files, note, gallery and its history."""
        out = Path(tempfile.mkdtemp(prefix="headhunter-"))
        files = []
        for image, record, name in zip(images, records, ("guided", "unguided")[-len(images) :], strict=True):
            prompt, negative = record["prompt"], record.get("negative_prompt")
            path = out / f"{name}-seed{record['seed']}.png"
            save_png(image, path, png_parameters(prompt, negative, flat_parameters(record)), record)
            files.append(str(path))
        factor = enlargement(images[0].size)
        shown = [enlarge(i, factor) for i in images]
        pair = (shown[0], shown[-1])
        scale_note = f"shown at {factor}x, native {images[0].width}x{images[0].height} px"
        diff = difference(images[0], images[-1]) if len(images) == 2 else Image.new("RGB", images[0].size)
        history = [{"image": files[0], "record": records[0]}, *history][:GALLERY_KEEP]
        return (
            pair,
            enlarge(diff, factor),
            files,
            self.note(records[0], scale_note),
            gallery_items(history),
            history,
            records[0]["seed"],
        )

    def shown_as(self) -> str:
        """How results are shown, for the labels: the factor where the model makes one size only."""
        if self.sizes.trained_only:
            h, w = self.sizes.native
            return f"shown at {enlargement((w, h))}x, native {w}x{h} px, nearest neighbour"
        return "small images enlarged with nearest neighbour to about 512 px; the note gives the factor"

    def note(self, record: dict, scale_note: str) -> str:
        """One plain paragraph: seed, what guided the image, and what the default preset is for."""
        if record["guidance"] == "none":
            return f"seed {record['seed']} · no heads selected: one unguided image ({scale_note})"
        preset = record["pag_preset"]
        scales = ", ".join(f"{g['name']} w={g['scale']:g}" for g in record["pag_groups"])
        if record.get("pag_branch") == "uncond":
            scales = "CFG's uncond branch perturbed, w not used"
        if record.get("pag_every", 1) > 1:
            scales += f", perturbed every {record['pag_every']} steps"
        heads = record["pag_heads"]
        text = f"seed {record['seed']} · heads {heads} ({scales}) · preset: {preset} · {scale_note}"
        if preset == DEFAULT_PRESET:
            text += (
                "\n\nThe default is a *style* preset: it makes the toy model's pictures darker, and on 800 "
                "two-object prompt-seed pairs it also raised fully correct images by +0.040 [+0.015, +0.066] "
                "(95% interval). The toy-sd3-fidelity preset (a 128-pair head search) raised the share of the "
                "prompt drawn a little on two of three 800-pair sets but not fully correct images, so it is "
                "offered, not the default."
            )
        return text

    def reuse(self, history: list, index: int | None):
        """The inputs that made gallery item `index`: prompt, seed, sizes, CFG, heads, w, window."""
        if index is None or not history or not 0 <= index < len(history):
            raise InputError("Gallery: click an image in the gallery first")
        r = history[index]["record"]
        guided = r["guidance"] != "none"
        groups = r.get("pag_groups") or [{"scale": PAG["scale"].default}]
        preset = r.get("pag_preset", CUSTOM)
        return (
            r["prompt"],
            r.get("negative_prompt", ""),
            r["seed"],
            r["num_inference_steps"],
            r["width"],
            r["height"],
            r["guidance_scale"],
            groups[0]["scale"],
            r.get("pag_identity", PAG["identity"].default),
            r.get("pag_start", PAG["start"].default),
            r.get("pag_stop", PAG["stop"].default),
            r.get("pag_every", PAG["every"].default),
            r.get("pag_branch", PAG["branch"].default),
            preset if preset in self.presets else CUSTOM,
            r.get("pag_heads", "") if guided else "",
        )

    # -- head search ---------------------------------------------------------------------------------------

    def check_search(
        self, objective, prompts, seeds, k, rounds, steps
    ) -> tuple[list[str], int, int, int, int]:
        """Checked search inputs, before any work."""
        choice("Objective", objective, SEARCH_OBJECTIVES)
        prompts = text("Prompts", prompts, limit=MAX_SEARCH_PROMPTS * MAX_PROMPT_CHARS)
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not 1 <= len(lines) <= MAX_SEARCH_PROMPTS:
            raise InputError(
                f"Prompts: give 1 to {MAX_SEARCH_PROMPTS} prompts, one per line (got {len(lines)})"
            )
        return (
            lines,
            whole("Seeds", seeds, 1, MAX_SEARCH_SEEDS),
            whole("k", k, 1, MAX_K),
            whole("Rounds", rounds, 1, MAX_ROUNDS),
            whole("Steps", self.default_steps if steps is None else steps, 1, self.limits.max_steps),
        )

    def search(
        self,
        objective: str,
        prompts: str,
        seeds: float = 2,
        k: float = 4,
        rounds: float = 1,
        steps: float | None = None,
        sweep: bool = True,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """Run a head search; yields (head map PNG, report, preset file, heads with u, w) as they arrive."""
        from guidance.objectives import get_objective
        from guidance.search import HeadSearch, SearchSettings, label, preset

        lines, seeds, k, rounds, steps = self.check_search(objective, prompts, seeds, k, rounds, steps)
        if not isinstance(sweep, bool):
            raise InputError(f"Head map: {sweep!r} must be true or false")
        obj = get_objective(objective)
        height, width = self.sizes.native
        settings = SearchSettings(
            prompts=lines,
            seeds=list(range(seeds)),
            steps=steps,
            size=height if height == width else None,
            guidance_scale=float(self.default_cfg),
            model=self.name,
            objective=obj.name,
            extra=self.extras,
        )
        out = Path(tempfile.mkdtemp(prefix="headhunter-search-"))
        search = HeadSearch(self.search_pipe, obj, settings)
        report = [f"Unguided {obj.name}: **{search.baseline:.4f}** (higher is better)"]
        image = None
        if sweep:
            scores = search.head_map()
            image = str(head_map_png(scores, search.baseline, obj.name, out / "headmap.png"))
            best = sorted(scores, key=lambda h: -scores[h])[:5]
            report.append("Best single heads: " + ", ".join(f"{label((h,))} {scores[h]:.4f}" for h in best))
            yield image, "\n\n".join(report), None, "", settings.pag_scale
        history = search.greedy(k, rounds)
        rounds_text, selected = search_rounds(history, search.baseline)
        report += rounds_text
        if not selected:
            yield image, "\n\n".join(report), None, "", settings.pag_scale
            return
        rounds_json = [{**r, "round": i} for i, r in enumerate(history, start=1)]
        found = preset(
            selected,
            settings,
            SEARCH_USE_STRENGTH,
            {"unguided": search.baseline, "rounds": rounds_json},
            objective,
            layout=search.layout,
        )
        path = found.save(out / f"preset-{objective}.json")
        w = effective_scales(found, settings.pag_scale)[0]
        report.append(
            f"Found: **{str(found)}** at w={w:g} (searched with u=1; used at u={SEARCH_USE_STRENGTH:g}, "
            "as the paper recommends). 'Use these heads' copies exactly this."
        )
        yield image, "\n\n".join(report), str(path), str(found), w


def search_rounds(history: list[dict], baseline: float) -> tuple[list[str], list]:
    """Report lines (rounds counted from 1) and the adopted selection: a round that does not beat the best
    earlier selection (the unguided image first) is not adopted. A record's own `adopted` field wins."""
    lines, selected, best = [], [], baseline
    for number_, record in enumerate(history, start=1):
        score = float(record["score"])
        adopted = record.get("adopted", score > best)
        added = ", ".join(record.get("added", []))
        if adopted:
            selected, best = list(record["selected"]), max(best, score)
            lines.append(f"Round {number_}: added {added} → {score:.4f} (adopted)")
        else:
            lines.append(
                f"Round {number_}: added {added} → {score:.4f}, not better than {best:.4f}: not adopted"
            )
    if not selected:
        lines.append("No round beat the unguided image: no heads to use for this objective.")
    return lines, selected


def selected_index(event: gr.SelectData) -> int:
    """The gallery item the user clicked."""
    return event.index


def gallery_items(history: list) -> list[tuple[str, str]]:
    """(image, caption) for each result since the page opened, newest first."""
    items = []
    for item in history:
        r = item["record"]
        what = r.get("pag_preset", "") if r["guidance"] != "none" else "unguided"
        items.append((item["image"], f"seed {r['seed']} · {what} · {r['prompt'][:40]}"))
    return items


# ------------------------------------------------------------------------------------------------------------
# Novel views (UpFusion): loaded on first use, only where its weights exist
# ------------------------------------------------------------------------------------------------------------

UPFUSION = ASSETS / "toy-upfusion"
MAX_VIEW_PIXELS = 4096
MAX_CAMERAS, MAX_FRAMES = 12, 36


class NovelViews:
    """UpFusion novel views for the demo: checks, lazy loading, views and turntable."""

    def __init__(self, folder: Path = UPFUSION, device: str = "cpu", max_steps: int = 100):
        self.folder, self.device, self.max_steps = Path(folder), device, max_steps
        self.pipe, self._lock = None, threading.Lock()

    def unavailable(self) -> str | None:
        """Why the tab cannot run (in words), or None."""
        if not (self.folder / "model_index.json").is_file():
            return (
                f"Novel views need the UpFusion weights in {display_name(self.folder)}/ (not present here)."
            )
        try:
            import pipelines.upfusion  # noqa: F401
        except ImportError as error:
            return f"Novel views are not available in this installation ({error})."
        return None

    def _load(self):
        with self._lock:
            if self.pipe is None:
                from pipelines.upfusion import UpFusionPipeline

                self.pipe = UpFusionPipeline.from_pretrained(str(self.folder)).to(self.device)
        return self.pipe

    def views(self, files) -> list[Image.Image]:
        """1-6 uploaded images as RGB (transparency on white), all at the first one's size."""
        files = [files] if isinstance(files, str) else list(files or [])
        if not 1 <= len(files) <= 6:
            raise InputError(f"Images: upload 1 to 6 images of the object (got {len(files)})")
        images = []
        for i, file in enumerate(files, start=1):
            unreadable = f"Images: file {i} is not an image this demo can read"
            try:
                with Image.open(file) as image:
                    width, height = image.size
                    if max(width, height) <= MAX_VIEW_PIXELS:
                        image.verify()  # the whole file (a truncated PNG too), before decoding it
            except Image.DecompressionBombError:  # PIL's own size limit, far above ours
                raise InputError(f"Images: image {i} is larger than {MAX_VIEW_PIXELS} px a side") from None
            except (OSError, ValueError, TypeError, SyntaxError):
                raise InputError(unreadable) from None
            if max(width, height) > MAX_VIEW_PIXELS:
                raise InputError(
                    f"Images: image {i} is {width}x{height} px; allowed: at most {MAX_VIEW_PIXELS} px a side"
                )
            try:
                with Image.open(file) as image:
                    rgba = image.convert("RGBA")
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                raise InputError(unreadable) from None
            white = Image.new("RGBA", rgba.size, "white")
            images.append(Image.alpha_composite(white, rgba).convert("RGB"))
        return [im.resize(images[0].size) for im in images]

    def cameras(self, text_value: str) -> list[tuple[float, float]]:
        """'azimuth, elevation; ...' in degrees -> pairs, else InputError naming the input."""
        pairs = [p for p in text("Cameras", text_value, limit=1000).split(";") if p.strip()]
        if not 1 <= len(pairs) <= MAX_CAMERAS:
            raise InputError(f"Cameras: give 1 to {MAX_CAMERAS} 'azimuth, elevation' pairs separated by ';'")
        cameras = []
        for pair in pairs:
            parts = pair.split(",")
            try:
                azimuth, elevation = (float(p) for p in parts)
            except ValueError:
                raise InputError(f"Cameras: cannot read {pair.strip()!r}; write e.g. '90, 15'") from None
            cameras.append(
                (
                    number("Cameras (azimuth)", azimuth, -360, 360),
                    number("Cameras (elevation)", elevation, -89, 89),
                )
            )
        return cameras

    def run(
        self,
        files,
        mode,
        cameras,
        frames,
        elevation,
        steps,
        cfg,
        seed,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """Novel views of the uploaded object: a gallery, and a turntable GIF for an orbit."""
        reason = self.unavailable()
        if reason:
            raise InputError(reason)
        mode = choice("Mode", mode, ("views", "orbit"))
        images = self.views(files)
        steps = whole("Steps", steps, 1, self.max_steps)
        cfg = number("CFG scale", cfg, 1, 30)
        seed = whole("Seed", seed, 0, 2**63 - 1)
        call = dict(
            num_inference_steps=steps, guidance_scale=cfg, generator=torch.Generator().manual_seed(seed)
        )
        if mode == "views":
            queries = self.cameras(cameras)
            views = self._load()(images=images, query_cameras=queries, **call).images
            return [
                (v, f"azimuth {a:g}°, elevation {e:g}°") for v, (a, e) in zip(views, queries, strict=True)
            ], None
        frames = whole("Frames", frames, 2, MAX_FRAMES)
        elevation = number("Elevation", elevation, -89, 89)
        from pipelines.upfusion import orbit

        gif = Path(tempfile.mkdtemp(prefix="headhunter-orbit-")) / "orbit.gif"
        views = orbit(self._load(), images, frames=frames, elevation=elevation, gif_path=str(gif), **call)
        return [(v, f"frame {i + 1}") for i, v in enumerate(views)], str(gif)


# ------------------------------------------------------------------------------------------------------------
# The UI
# ------------------------------------------------------------------------------------------------------------


def _pag_slider(name: str, label: str, low: float, high: float, step: float, value=None):
    s = PAG[name]
    return Slider(low, high, value=s.default if value is None else value, step=step, label=label, info=s.help)


def build_app(demo: Demo, views: NovelViews | None = None) -> gr.Blocks:
    """The Blocks UI around a `Demo`: Generate, Head search and Novel views tabs."""
    views = views or NovelViews(max_steps=demo.limits.max_steps)
    with gr.Blocks(title="HeadHunter") as app:
        gr.Markdown(f"# HeadHunter · SoftPAG\nModel: `{demo.name}` · sizes: {demo.sizes.describe()}")
        with gr.Tab("Generate"):
            ui = _generate_tab(demo)
        with gr.Tab("Head search"):
            _search_tab(demo, ui)
        with gr.Tab("Novel views"):
            _novel_views_tab(views)
        ui["stop"].click(demo.stop, None, None, cancels=ui["events"], api_name=False)
    return check_api_inputs(app)


def _generate_inputs(demo: Demo) -> dict:
    """The Generate tab's inputs, each with plain-words help."""
    ui = {}
    ui["prompt"] = Textbox(
        elem_id="prompt",
        label="Prompt",
        value=EXAMPLE_PROMPTS[0],
        info=HELP["prompt"],
        max_length=MAX_PROMPT_CHARS,
    )
    ui["negative"] = Textbox(label="Negative prompt", value="", info=HELP["negative"])
    with gr.Row():
        ui["seed"] = Number(elem_id="seed", label="Seed", value=0, step=1, info=HELP["seed"])
        ui["random_seed"] = gr.Button("🎲 Random seed", size="sm")
        ui["last_seed"] = gr.Button("♻ Last seed", size="sm")
    with gr.Row():
        ui["steps"] = Number(
            elem_id="steps",
            label="Steps",
            value=demo.default_steps,
            step=1,
            info=f"{HELP['steps']} 1 to {demo.limits.max_steps}.",
        )
        h, w = demo.sizes.native
        ui["width"] = Number(
            elem_id="width",
            label="Width",
            value=w,
            step=demo.sizes.multiple,
            info=f"{HELP['width']} This model: {demo.sizes.describe()}.",
        )
        ui["height"] = Number(
            label="Height",
            value=h,
            step=demo.sizes.multiple,
            info=f"{HELP['height']} This model: {demo.sizes.describe()}.",
        )
    ui["cfg"] = Slider(1, 15, value=demo.default_cfg, step=0.5, label="CFG scale", info=HELP["cfg"])
    heads, w = demo.preset_inputs(demo.default_preset)
    ui["preset"] = named(
        Dropdown(
            [CUSTOM, *demo.presets], value=demo.default_preset, label="Head preset", info=demo.preset_note()
        ),
        "Preset",
    )
    ui["heads"] = Textbox(
        elem_id="heads", label="Heads", value=heads, placeholder="L1H0=1, L7H7=0.5", info=HELP["heads"]
    )
    with gr.Row():
        ui["pag_scale"] = named(_pag_slider("scale", "Head guidance w", 0, 10, 0.25, w), "PAG scale w")
        ui["strength"] = named(_pag_slider("strength", "Default strength u", 0, 1, 0.05), "Strength u")
    with gr.Accordion("More head settings", open=False):
        ui["identity"] = Radio(
            list(PAG["identity"].choices),
            value=PAG["identity"].default,
            label="Identity",
            info=PAG["identity"].help,
        )
        with gr.Row():
            ui["start"] = _pag_slider("start", "Start", 0, 1, 0.05)
            ui["stop_at"] = _pag_slider("stop", "Stop", 0, 1, 0.05)
        with gr.Row():
            ui["every"] = _pag_slider("every", "Every k steps", 1, 8, 1)
            ui["branch"] = Radio(
                list(PAG["branch"].choices),
                value=PAG["branch"].default,
                label="Perturbed branch",
                info=PAG["branch"].help,
            )
        ui["preset_file"] = named(
            gr.File(label="Load a preset JSON", file_types=[".json"], type="filepath"), "Preset file"
        )
    with gr.Row():
        ui["run"] = gr.Button("Generate", variant="primary")
        ui["stop"] = gr.Button("Stop", variant="stop")
    with gr.Accordion("Vocabulary (words the model was trained on)", open=False):
        gr.Markdown(", ".join(demo.words) if demo.words else "This model was trained on open vocabulary.")
    return ui


def _generate_tab(demo: Demo) -> dict:
    """Inputs, results, gallery and their events."""
    with gr.Row():
        with gr.Column():
            ui = _generate_inputs(demo)
        with gr.Column():
            shown = demo.shown_as()
            ui["comparison"] = gr.ImageSlider(
                label=f"Guided | unguided, same seed ({shown})", type="pil", format="png"
            )
            ui["difference"] = gr.Image(
                label=f"Difference |guided - unguided| x{DIFFERENCE_GAIN}, black = same ({shown})",
                type="pil",
                format="png",
            )
            ui["note"] = gr.Markdown(label="About this result")
            ui["files"] = gr.File(label="PNG files (native size, settings inside)", file_count="multiple")
            ui["gallery"] = gr.Gallery(
                elem_id="gallery", label="Results since the page opened", columns=4, height=260
            )
            ui["reuse"] = gr.Button("Reuse these settings (click an image first)")
    examples = examples_for(demo.words)
    if examples:
        gr.Examples([[p] for p in examples], [ui["prompt"]], label="Prompts this model understands")
    history, picked, last_seed = gr.State([]), gr.State(None), gr.State(None)
    inputs = [
        ui[k]
        for k in (
            "prompt",
            "negative",
            "seed",
            "steps",
            "width",
            "height",
            "cfg",
            "pag_scale",
            "strength",
            "identity",
            "start",
            "stop_at",
            "every",
            "branch",
            "preset",
            "heads",
        )
    ]
    generated = ui["run"].click(
        demo.generate,
        [*inputs, history],
        [ui["comparison"], ui["difference"], ui["files"], ui["note"], ui["gallery"], history, last_seed],
        api_name="generate",
        concurrency_limit=demo.limits.concurrency,
        show_progress_on=[ui["comparison"]],
    )
    ui["events"] = [generated]
    _wire_generate_inputs(demo, ui, inputs, history, picked, last_seed)
    return ui


def _wire_generate_inputs(demo: Demo, ui: dict, inputs: list, history, picked, last_seed) -> None:
    """Preset <-> heads/w, seed buttons, gallery reuse, preset upload (none of them an API endpoint)."""
    private = dict(api_visibility="private", queue=False)
    ui["preset"].input(demo.choose_preset, [ui["preset"]], [ui["heads"], ui["pag_scale"]], **private)
    for edited in ("heads", "pag_scale", "strength"):
        ui[edited].input(lambda: CUSTOM, None, [ui["preset"]], **private)
    ui["random_seed"].click(lambda: random.randrange(2**31), None, [ui["seed"]], **private)
    ui["last_seed"].click(lambda s: gr.skip() if s is None else s, [last_seed], [ui["seed"]], **private)
    ui["gallery"].select(selected_index, None, [picked], **private)
    reused = [i for i in inputs if i is not ui["strength"]]
    ui["reuse"].click(demo.reuse, [history, picked], reused, **private)
    ui["preset_file"].upload(
        demo.read_preset_file, [ui["preset_file"]], [ui["heads"], ui["pag_scale"], ui["preset"]], **private
    )


def _search_tab(demo: Demo, generate_ui: dict) -> None:
    """Head search: objective, prompts, greedy rounds; the head map and 'Use these heads'."""
    with gr.Row():
        with gr.Column():
            objective = Dropdown(
                list(SEARCH_OBJECTIVES),
                value="toy-dark",
                label="Objective",
                info="What the search tries to raise (toy-* use the toy world's evaluator).",
            )
            prompts = named(
                Textbox(
                    elem_id="search-prompts",
                    label=f"Prompts (one per line, at most {MAX_SEARCH_PROMPTS})",
                    lines=4,
                    value="a red circle\na blue square on the left and a yellow triangle on the right",
                    info="The search scores heads on these prompts.",
                ),
                "Prompts",
            )
            with gr.Row():
                seeds = named(
                    Number(
                        elem_id="search-seeds",
                        label="Seeds per prompt",
                        value=2,
                        step=1,
                        info=f"1 to {MAX_SEARCH_SEEDS}.",
                    ),
                    "Seeds",
                )
                k = named(
                    Number(
                        elem_id="search-k",
                        label="Heads per round k",
                        value=4,
                        step=1,
                        info=f"Heads added per round, 1 to {MAX_K}.",
                    ),
                    "k",
                )
                rounds = Number(
                    elem_id="search-rounds",
                    label="Rounds",
                    value=1,
                    step=1,
                    info=f"Greedy rounds, 1 to {MAX_ROUNDS}.",
                )
                steps = Number(
                    elem_id="search-steps",
                    label="Steps",
                    value=demo.default_steps,
                    step=1,
                    info="Denoising steps per image.",
                )
            sweep = Checkbox(label="Head map", value=True, info="Score every head alone first (slower).")
            with gr.Row():
                go = gr.Button("Search", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            head_map = gr.Image(label="Head map", type="filepath", show_label=False)
            report = gr.Markdown(label="Search report")
            found = gr.File(label="Found preset (JSON)")
            found_heads = gr.Textbox(elem_id="found-heads", label="Found heads (with u)", interactive=False)
            found_w = gr.Number(label="Found w", interactive=False)
            use = gr.Button("Use these heads in the Generate tab")
    searched = go.click(
        demo.search,
        [objective, prompts, seeds, k, rounds, steps, sweep],
        [head_map, report, found, found_heads, found_w],
        api_name="search",
        concurrency_limit=demo.limits.concurrency,
        show_progress_on=[report],
    )
    stop.click(None, None, None, cancels=[searched], api_visibility="private")
    generate_ui["events"].append(searched)
    use.click(
        lambda h, w: (h, w, CUSTOM) if h else (gr.skip(),) * 3,
        [found_heads, found_w],
        [generate_ui["heads"], generate_ui["pag_scale"], generate_ui["preset"]],
        api_visibility="private",
    )


def _novel_views_tab(views: NovelViews) -> None:
    """UpFusion: upload views, choose cameras or an orbit; gallery and turntable GIF."""
    reason = views.unavailable()
    gr.Markdown(
        reason
        or "Novel views of an object from 1-6 photos without camera poses (UpFusion). Cameras are "
        "relative to the first photo: azimuth turns around the object, elevation looks from above."
    )
    gr.Markdown("A toy-object picker is not offered: `pipelines.upfusion` has no example-views function.")
    with gr.Row():
        with gr.Column():
            files = named(
                gr.File(
                    label="Images of the object (1-6)",
                    file_count="multiple",
                    file_types=["image"],
                    type="filepath",
                ),
                "Images",
            )
            mode = Radio(
                ["views", "orbit"],
                value="views",
                label="Mode",
                info="'views': the cameras below; 'orbit': a full turn, as a GIF.",
            )
            cameras = Textbox(
                label="Cameras",
                value="90, 15; 180, 15; 270, 15",
                info="'azimuth, elevation' in degrees, pairs separated by ';'.",
            )
            with gr.Row():
                frames = Number(label="Frames", value=12, step=1, info=f"Orbit frames, 2 to {MAX_FRAMES}.")
                elevation = Number(label="Elevation", value=15, info="Orbit elevation in degrees.")
            with gr.Row():
                steps = Number(label="Steps", value=25, step=1, info="Denoising steps.")
                cfg = Slider(
                    1, 15, value=3, step=0.5, label="CFG scale", info="How closely to follow the photos."
                )
                seed = Number(label="Seed", value=0, step=1, info="The same seed gives the same views.")
            go = gr.Button("Make views", variant="primary", interactive=reason is None)
        with gr.Column():
            gallery = gr.Gallery(label="Novel views", columns=4)
            gif = gr.File(label="Turntable GIF")
    go.click(
        views.run,
        [files, mode, cameras, frames, elevation, steps, cfg, seed],
        [gallery, gif],
        api_name="novel_views",
        concurrency_limit=1,
        show_progress_on=[gallery],
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model, serve the app."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hub id or folder (default: the toy SD3 model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-steps", type=int, default=Limits.max_steps)
    parser.add_argument("--max-size", type=int, default=Limits.max_size)
    parser.add_argument("--queue-size", type=int, default=Limits.queue_size)
    parser.add_argument(
        "--verbose", action="store_true", help="the libraries' notices, loading bars and requests"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(
        logging.INFO if args.verbose else logging.WARNING
    )  # a line per request
    quiet_console(verbose=args.verbose)
    model = args.model or str(DEFAULT_MODEL)
    before_loading(recommended_settings(model).get("max_sequence_length"))
    try:
        pipe = HeadHunterPipeline.from_pretrained(model, dtype=getattr(torch, args.dtype)).to(args.device)
    except ModelFolderError as error:  # one line naming the folder, the component and what to do
        parser.exit(2, f"app.py: error: {printable(str(error))}\n")
    pipe.set_progress_bar_config(disable=True)
    limits = Limits(args.max_steps, args.max_size, args.queue_size)
    demo = Demo(pipe, model, limits, name=args.model or "assets/toy-sd3")
    app = build_app(demo, NovelViews(device=args.device, max_steps=limits.max_steps))
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    app.launch(server_name=args.host, server_port=args.port, show_error=False)


if __name__ == "__main__":
    main()
