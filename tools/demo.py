"""The demo's logic without Gradio (app.py lays it out): input checks, the model folder (name, sizes, vocabulary,
examples), heads for the UI, the record of an image, pictures (enlargement, difference, head maps with their
legends), a head search followed while it runs and its report, structured prompts, and the toy objects and input
views of novel views.

Every refusal is a `DemoInputError` whose message names the input as the UI labels it; app.py shows it as a
Gradio error.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from guidance import SOFTPAG_SETTINGS, HeadSelection, HeadSelectionError
from guidance.config import STRUCTURED_SETTINGS, UPFUSION_SETTINGS, Setting, check_text
from guidance.heads import HeadEntry, HeadGroup, short_repr
from guidance.search import HeadSearch, SearchSettings, heatmap, label
from guidance.swap import denoiser_of
from tools.search_run import (  # noqa: F401 (guard_failure, profile_text, search_objective: for app.py and tests)
    SearchResult,
    guard_failure,
    head_map_line,
    profile_text,
    round_guard,
    run_search,
    search_objective,
    search_rounds,
    write_preset,
)
from tools.settings import ASSETS, LATER_SETTINGS, Vocabulary, model_vocabulary

PAG = {name.removeprefix("pag_"): setting for name, setting in SOFTPAG_SETTINGS.items()}
DEFAULT_PRESET = (
    "toy-sd3-dark"  # the one measured help on the toy SD3 (docs/toyworld.md: darker, fully correct +0.040)
)
MAX_PROMPT_CHARS = 2000
SHOWN_PX = 512  # small images are shown enlarged (nearest neighbour) to about this size
DIFFERENCE_GAIN = 4


class DemoInputError(ValueError):
    """A refused demo input: the message names the input, the value and what is allowed."""


# ------------------------------------------------------------------------------------------------------------
# Input checks: every bad value is refused with a message that names the input
# ------------------------------------------------------------------------------------------------------------


def setting_of(s: Setting, label: str, value):
    """`value` checked by a config `Setting` (the source of its range and its message), refused as a
    DemoInputError naming the input as the UI labels it. A whole float (2.0) counts as an integer: a UI number
    arrives as a float."""
    if s.kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    return s.check(value, DemoInputError, label)


def setting(name: str, label: str, value):
    """A SoftPAG setting checked against `SOFTPAG_SETTINGS` (the source of its range), named as in the UI."""
    return setting_of(SOFTPAG_SETTINGS[name], label, value)


def whole(label: str, value, low: int, high: int) -> int:
    """`value` as an int if it is a whole number in [low, high], else DemoInputError naming `label`."""
    return setting_of(Setting(label, low, "integer", low, high), label, value)


def number(label: str, value, low: float, high: float) -> float:
    """`value` as a float if it is a finite number in [low, high], else DemoInputError naming `label`."""
    return setting_of(Setting(label, low, "number", low, high), label, value)


def choice(label: str, value, choices) -> str:
    """`value` if it is one of `choices`, else DemoInputError naming `label`."""
    return setting_of(Setting(label, None, "choice", choices=tuple(choices)), label, value)


def text(label: str, value, required: bool = False, limit: int = MAX_PROMPT_CHARS) -> str:
    """`value` (None: empty) as stripped text (`check_text`: a string of valid Unicode, no control character
    other than tab and newline, at most `limit` characters, not blank where `required`), else DemoInputError
    naming `label`."""
    value = "" if value is None else value
    return check_text(value, label, DemoInputError, 1 if required else 0, limit).strip()


# ------------------------------------------------------------------------------------------------------------
# The model folder: name, sizes, vocabulary, examples
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
        """`value` if this model supports it along one side, else DemoInputError naming `label` and the rule."""
        low, high = (native, native) if self.trained_only else (self.low, self.high)
        try:
            checked = setting_of(Setting(label, native, "integer", low, high), label, value)
            if checked % self.multiple:
                raise DemoInputError(label)
        except DemoInputError:
            if self.trained_only:
                rule = (
                    f"this toy model makes {self.native[1]}x{self.native[0]} images only (its training size; other "
                    "sizes give noise)"
                )
            else:
                rule = f"use a multiple of {self.multiple} from {self.low} to {self.high}"
            raise DemoInputError(f"{label}: {short_repr(value)} is not allowed; {rule}") from None
        return checked

    def describe(self) -> str:
        """The rule in words."""
        if self.trained_only:
            return f"{self.native[1]}x{self.native[0]} only (the toy model's training size)"
        return f"multiples of {self.multiple} from {self.low} to {self.high}"


# Families whose pipelines pack 2x2 latent patches into one token (or check sides against 2x the VAE factor).
PACKED_LATENTS = ("Flux", "Flux2", "Chroma", "QwenImage", "ZImage")
FAMILY_CALLS = {"Wan": {"num_frames": 1, "output_type": "pil"}}  # a video family: one frame is one image


def _family(pipe) -> str:
    """The diffusers family of a (HeadHunter) pipeline: `HeadHunterFluxPipeline` -> `Flux`."""
    return type(pipe).__name__.removeprefix("HeadHunter").removesuffix("Pipeline")


def model_sizes(pipe, settings: dict, max_size: int) -> Sizes:
    """What the loaded model can make: toy folders (recorded height and width) their trained size only; SD3's
    positional table limits it to `pos_embed_max_size * patch_size * vae_scale_factor`. Any family
    `HeadHunterPipeline` loads: the VAE factor (spatial for video models), the denoiser's patch (its spatial side)
    and the 2x2 packing of FLUX-like pipelines give the multiple; the default size is the pipeline's."""
    config = denoiser_of(pipe).config
    vae = getattr(pipe, "vae_scale_factor", None) or getattr(pipe, "vae_scale_factor_spatial", None) or 8
    patch = getattr(config, "patch_size", None) or 1
    patch = patch[-1] if isinstance(patch, Sequence) else patch
    multiple = vae * 2 if _family(pipe) in PACKED_LATENTS else vae * patch
    high = max_size
    table = getattr(config, "pos_embed_max_size", None)
    if table:
        high = min(high, table * patch * vae)
    high -= high % multiple
    sample = getattr(pipe, "default_sample_size", None) or getattr(config, "sample_size", None)
    default = sample * vae if isinstance(sample, int) else 1024
    native = (settings.get("height") or default, settings.get("width") or default)
    trained_only = "height" in settings and "width" in settings
    if not trained_only:
        native = tuple(min(max(n - n % multiple, multiple), high) for n in native)
    return Sizes(native, multiple, multiple, high, trained_only)


def family_call(pipe) -> dict:
    """Call arguments a family needs to make one image (a video family: one frame, as PIL)."""
    return dict(FAMILY_CALLS.get(_family(pipe), {}))


def first_image(output) -> Image.Image:
    """The first image of a pipeline's output (the first frame of a video family's)."""
    return output.images[0] if hasattr(output, "images") else output.frames[0][0]


def prompt_reader_problem(pipe, name: str) -> str | None:
    """Why the demo cannot take text prompts with this model (no text encoder or tokenizer), or None."""
    missing = [c for c in ("text_encoder", "tokenizer") if getattr(pipe, c, None) is None]
    if not missing:
        return None
    return (
        f"{name}: this model folder has no {' or '.join(missing)}, so it cannot read a text prompt (it takes "
        "prompt embeddings only, `prompt_embeds`); the demo reads prompts as text: use the model from Python"
    )


def vocabulary(model: str | Path) -> list[str]:
    """The words of a local model's CLIP vocabulary (not sub-word pieces), or [] for other models.

    Whole-word tokens of two letters or more, and the article "a" (a CLIP vocabulary holds every single letter
    as a token, so "a" is the one one-letter word taken); a token that ends another word is a piece of it
    ("ack" of "black") and is left out."""
    path = Path(model) / "tokenizer" / "vocab.json"
    if not path.is_file():
        return []
    tokens = json.loads(path.read_text())
    words = {t[:-4] for t in tokens if re.fullmatch(r"[a-z]{2,}</w>", t)}
    if len(words) > 5000:  # a real CLIP vocabulary: too long to list
        return []
    pieces = {w for w in words if any(o != w and o.endswith(w) for o in words)}
    return sorted(words - pieces | ({"a"} if "a</w>" in tokens else set()))


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt as the vocabulary check reads them (lower case, letters only)."""
    return re.findall(r"[a-z]+", prompt.lower())


def unknown_words(prompt: str, words: Sequence[str]) -> list[str]:
    """Words of `prompt` outside the model's vocabulary `words`, in order ([] for an open vocabulary)."""
    if not words:
        return []
    known = set(words)
    return list(dict.fromkeys(w for w in prompt_words(prompt) if w not in known))


# Prompts in the toy world's caption grammar, for a model folder that records no grammar: objects of its colours
# and shapes (white, gray and black are backgrounds there), none of the pairings held out of its training.
EXAMPLE_PROMPTS = (
    "a green circle on the left and a blue square on the right",
    "a large green square",
    "a small yellow triangle at the top",
    "a purple circle in the center on a dark background",
    "an outlined blue square at the bottom",
    "a red triangle at the top, a purple circle in the center and a green square at the bottom",
)


def examples_for(words: Sequence[str], examples: Sequence[str] = EXAMPLE_PROMPTS) -> list[str]:
    """The example prompts the model can read: all of them for a real model, else those within `words`."""
    return [p for p in examples if not unknown_words(p, words)]


@dataclass(frozen=True)
class PromptHelp:
    """What a model reads: its words, example prompts it draws, and what in a prompt it was not trained on. From
    the grammar its folder records (`tools.settings.model_vocabulary`: the toy models), else from its
    tokenizer's whole words (`vocabulary`; none for a real model's open vocabulary)."""

    words: tuple[str, ...]
    examples: tuple[str, ...]
    grammar: Vocabulary | None = None

    def problems(self, prompt: str) -> list[str]:
        """What in `prompt` the model was not trained on, in words ([] for an open vocabulary)."""
        if self.grammar is not None:
            return self.grammar.problems(prompt)
        return [f"{short_repr(w)} (not a word it knows)" for w in unknown_words(prompt, self.words)]

    def describe(self) -> str:
        """The vocabulary for the UI (Markdown)."""
        if self.grammar is not None:
            return "\n".join(f"- {line}" for line in self.grammar.describe())
        return ", ".join(self.words) if self.words else "This model was trained on open vocabulary."

    def two_objects(self) -> str:
        """The first example with two objects or more (what structured attention is for), else the first."""
        return next(
            (e for e in self.examples if " and " in e or " of " in e),
            self.examples[0] if self.examples else "",
        )


def prompt_help(model: str | Path) -> PromptHelp:
    """`PromptHelp` of a model folder: a recorded grammar that cannot be read counts as none (the tokenizer's
    words are used)."""
    try:
        grammar = model_vocabulary(model)
    except ValueError:
        grammar = None
    if grammar is None:
        words = vocabulary(model)
        return PromptHelp(tuple(words), tuple(examples_for(words)))
    examples = tuple(e for e in grammar.examples if not grammar.problems(e))
    return PromptHelp(tuple(w for w in grammar.words if w.isalpha()), examples, grammar)


# ------------------------------------------------------------------------------------------------------------
# Heads for the UI
# ------------------------------------------------------------------------------------------------------------


def parse_heads(heads_text, heads_per_layer: dict) -> HeadSelection | None:
    """The typed heads, checked against the loaded model; None when empty."""
    heads_text = text("Heads", heads_text, limit=20_000)
    if not heads_text:
        return None
    try:
        if heads_text.lower().endswith(".json"):
            raise HeadSelectionError("Heads: write heads such as L1H0, not a file name")
        selection = HeadSelection.parse(heads_text, "Heads")
        selection.validate(heads_per_layer, "Heads")
    except HeadSelectionError as error:
        raise DemoInputError(str(error)) from None
    return selection


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


def preset_fields(selection: HeadSelection) -> tuple[str, float]:
    """(heads text with every u written out, w) that reproduce a selection in the inputs: its one group scale,
    or the default w where groups have several or none."""
    scales = {g.scale for g in selection.groups if g.scale is not None}
    w = scales.pop() if len(scales) == 1 else PAG["scale"].default
    return str(explicit(selection, PAG["strength"].default)), float(w)


# (label in the UI, SoftPAG argument) of the settings that act only through heads
HEAD_SETTINGS = (
    ("Head guidance w", "pag_scale"),
    ("Default strength u", "pag_strength"),
    ("Identity", "pag_identity"),
    ("Start", "pag_start"),
    ("Stop", "pag_stop"),
    ("Every k steps", "pag_every"),
    ("Perturbed branch", "pag_branch"),
)


def unused_head_settings(pag: dict) -> list[str]:
    """The head settings changed from their defaults (as '<label> = <value>'), for a call without heads: they
    have no effect there and the user is told so."""
    return [
        f"{name} = {pag[key]:g}" if isinstance(pag[key], float | int) else f"{name} = {pag[key]}"
        for name, key in HEAD_SETTINGS
        if key in pag and pag[key] != SOFTPAG_SETTINGS[key].default
    ]


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


def flat_parameters(record: dict) -> dict:
    """The record for the A1111 `parameters` line: group scales as `name=w`, no nested objects."""
    flat = {k: v for k, v in record.items() if k not in ("pag_groups", "prompt", "negative_prompt")}
    if "pag_groups" in record:
        flat["pag_group_scales"] = " ".join(f"{g['name']}={g['scale']:g}" for g in record["pag_groups"])
    return flat


def gallery_items(history: list) -> list[tuple[str, str]]:
    """(image, caption) for each result since the page opened, newest first."""
    items = []
    for item in history:
        r = item["record"]
        what = r.get("pag_preset", "") if r["guidance"] != "none" else "unguided"
        items.append((item["image"], f"seed {r['seed']} · {what} · {r['prompt'][:40]}"))
    return items


def input_warnings(prompt: str, words: PromptHelp, unused: list[str]) -> list[str]:
    """What the user should know before looking at the result: what in the prompt the model was not trained on,
    head settings that do nothing without heads."""
    found = []
    problems = words.problems(prompt)
    if problems:
        found.append(
            f"Prompt: this model was not trained on {'; '.join(problems)}. It draws something it knows instead "
            "(see 'Vocabulary')."
        )
    if unused:
        found.append(
            f"No heads are chosen, so {', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no "
            "effect: choose heads (or a preset) to use the head settings."
        )
    return found


def result_note(record: dict, scale_note: str) -> str:
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
    text_ = f"seed {record['seed']} · heads {heads} ({scales}) · preset: {preset} · {scale_note}"
    if preset == DEFAULT_PRESET:
        text_ += (
            "\n\nThe default is a *style* preset: it makes the toy model's pictures darker, and on 800 "
            "two-object prompt-seed pairs it also raised fully correct images by +0.040 [+0.015, +0.066] "
            "(95% interval). The toy-sd3-fidelity preset (a 128-pair head search) raised the share of the "
            "prompt drawn a little on two of three 800-pair sets but not fully correct images, so it is "
            "offered, not the default."
        )
    return text_


# ------------------------------------------------------------------------------------------------------------
# Pictures: enlargement, difference, head maps with legends
# ------------------------------------------------------------------------------------------------------------


def enlargement(size: tuple[int, int]) -> int:
    """The whole factor that shows an image of `size` at about `SHOWN_PX` (1 for large images)."""
    return max(1, SHOWN_PX // max(size))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour enlargement: every pixel becomes a factor x factor block (no smoothing)."""
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def shown_at(size: tuple[int, int]) -> str:
    """How an image of `size` (width, height) is shown: its enlargement and native size."""
    factor = enlargement(size)
    if factor == 1:
        return f"native {size[0]}x{size[1]} px"
    return f"shown at {factor}x, native {size[0]}x{size[1]} px, nearest neighbour"


def difference(a: Image.Image, b: Image.Image, gain: int = DIFFERENCE_GAIN) -> Image.Image:
    """|a - b| per channel, brightened `gain` times (black = identical)."""
    delta = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)) * gain
    return Image.fromarray(np.clip(delta, 0, 255).astype(np.uint8))


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 8) -> Image.Image:
    """Two images of one size next to each other on white, `gap` px apart."""
    out = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, entries: list) -> None:
    """Legend rows: a swatch and its words."""
    for i, (colour, words) in enumerate(entries):
        top = y + i * 20
        draw.rectangle([x, top, x + 15, top + 15], fill=colour, outline="black")
        draw.text((x + 22, top + 2), words, fill="black")


GROUP_COLOURS = ((200, 60, 40), (40, 110, 200), (40, 150, 60), (150, 60, 170), (200, 140, 20))


def chosen_heads_png(selection: HeadSelection | None, heads_per_layer: dict, path: Path) -> Path:
    """The Generate tab's head map: layers x heads of the main attention, each chosen head filled in its group's
    colour (paler = smaller u), with a legend naming every group and its scale; heads of other attentions
    (SD3.5's `attn2`) listed below."""
    layers = heads_per_layer.get("attn", {})
    n_layers, n_heads = len(layers), max(layers.values(), default=0)
    cell = max(6, min(18, 480 // max(n_heads, n_layers, 1)))
    left, top = 40, 30
    groups = selection.groups if selection is not None else ()
    others = [h for g in groups for h in g.heads if h.attention != "attn"]
    legend_y = top + cell * n_layers + 24
    rows = len(groups) + 2 + (1 if others else 0)
    width = max(left + cell * n_heads + 10, 360)
    image = Image.new("RGB", (width, legend_y + 20 * rows + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), "Chosen heads: layers (rows) x heads (columns)", fill="black")
    for row, layer in enumerate(sorted(layers)):
        draw.text((4, top + row * cell + max(0, cell // 2 - 6)), f"L{layer}", fill="black")
        for head in range(layers[layer]):
            x, y = left + head * cell, top + row * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill="white", outline=(200, 200, 200))
    u_default = PAG["strength"].default
    for g, group in enumerate(groups):
        colour = GROUP_COLOURS[g % len(GROUP_COLOURS)]
        for h in group.heads:
            if h.attention != "attn" or h.layer not in layers:
                continue
            u = u_default if h.strength is None else h.strength
            shade = tuple(int(255 - (255 - c) * (0.25 + 0.75 * u)) for c in colour)
            x, y = left + h.head * cell, top + sorted(layers).index(h.layer) * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline="black")
    entries = [((255, 255, 255), "empty: untouched head")]
    entries += [
        (GROUP_COLOURS[g % len(GROUP_COLOURS)], f"group '{group.name}': {len(group.heads)} head(s)")
        for g, group in enumerate(groups)
    ]
    entries.append(((255, 255, 255), "paler fill = smaller strength u (u = 1 full colour)"))
    if others:
        entries.append(((255, 255, 255), "also: " + ", ".join(h.label for h in others)[:60]))
    _legend(draw, 6, legend_y, entries)
    image.save(path)
    return path


# ------------------------------------------------------------------------------------------------------------
# Head search: followed while it runs, and its report
# ------------------------------------------------------------------------------------------------------------


class Stopped(Exception):
    """The user pressed Stop; raised from a step callback so the pipeline restores its processors."""


class FollowedSearch(HeadSearch):
    """A `HeadSearch` whose progress can be read from another thread while it runs, and that stops at the next
    denoising step once `stop` is set: `phase`, `planned` (images the current phase needs), `made` (of them),
    `step` / `steps` (of the batch being made)."""

    def __init__(self, pipe, objective, settings, stop: threading.Event, started: Callable | None = None):
        self.stop, self.settings = stop, settings
        self.begin("Unguided images (the baseline every head is compared with)")
        if started is not None:  # readable from now on: the unguided images are made by the constructor
            started(self)
        super().__init__(pipe, objective, settings, progress=False)

    def begin(self, phase: str) -> None:
        """A new phase of the search: its counts start from 0."""
        self.phase, self.planned, self.made, self.step = phase, 0, 0, 0

    def per_pair(self, candidates, pairs="search"):
        """As `HeadSearch.per_pair`; the images it still has to make are added to the phase's plan."""
        candidates, indices = list(dict.fromkeys(candidates)), self._indices(pairs)
        self.planned += sum(1 for c in candidates for i in indices if i not in self.scores.get(label(c), {}))
        return super().per_pair(candidates, indices)

    def _generate(self, candidates, pairs):
        """As `HeadSearch._generate`, with a step callback that counts steps and stops when asked."""
        if self.stop.is_set():
            raise Stopped
        pipe = self.pipe

        def on_step(_pipe, i, t, kwargs):
            if self.stop.is_set():
                raise Stopped
            self.step = i + 1
            return {}

        def call(*args, **kwargs):
            return pipe(*args, callback_on_step_end=on_step, **kwargs)

        self.pipe, self.step = call, 0
        try:
            images = super()._generate(candidates, pairs)
        finally:
            self.pipe = pipe
        self.made += len(images)
        return images

    def fraction(self) -> float:
        """How much of the current phase is done (0 to 1), counting the steps of the batch being made."""
        if not self.planned:
            return 0.0
        batch = min(self.settings.batch, self.planned - self.made)
        return min(1.0, (self.made + batch * self.step / max(self.settings.steps, 1)) / self.planned)

    def status(self) -> str:
        """The phase in words, with its images and step: what the progress box shows."""
        if not self.planned:
            return f"{self.phase}: preparing"
        return (
            f"{self.phase}: {self.made} of {self.planned} images made "
            f"(batch of {min(self.settings.batch, self.planned - self.made)} at step {self.step} of "
            f"{self.settings.steps}), {self.fraction():.0%}"
        )


class SearchRun:
    """One head search for the demo, run by `run` in a worker thread; `outputs()` reads, from any thread, what
    it has so far: the head map, the report, the found preset with its heads and w, and the progress in words.
    Setting `stop` ends it at the next denoising step."""

    def __init__(self, pipe, objective, settings: SearchSettings, sweep: bool, out: Path, use_strength: float,
                 stop: threading.Event, about: str = ""):  # fmt: skip
        self.pipe, self.objective, self.settings, self.sweep = pipe, objective, settings, sweep
        self.out, self.use_strength, self.stop = Path(out), use_strength, stop
        self.search: FollowedSearch | None = None
        self.head_map: str | None = None
        self.report = [about] if about else []
        self.found: tuple[str | None, str, float] = (None, "", settings.pag_scale)
        self.state, self.error, self.started = "running", None, time.monotonic()

    def run(self) -> None:
        """The whole search; an error is kept in `error` for the caller's thread."""
        try:
            self._search()
        except Stopped:
            self.state = "stopped"
        except Exception as error:  # noqa: BLE001 (handed to the thread that shows it)
            self.state, self.error = "failed", error
        else:
            self.state = "done"

    def _search(self) -> None:
        search = FollowedSearch(
            self.pipe, self.objective, self.settings, self.stop, started=lambda s: setattr(self, "search", s)
        )
        name = self.objective.name
        self.report.append(f"Unguided {name}: **{search.baseline:.4f}** (higher is better)")

        def finished(phase: str, result: SearchResult) -> None:
            if phase == "head_map":  # shown while the greedy rounds run
                path = self.out / "headmap.png"
                self.head_map = str(heatmap(result.head_map, search.baseline, path, title=name))
                self.report.append(head_map_line(search, result.head_map))

        result = run_search(search, self.sweep, begin=search.begin, finished=finished)
        lines, _ = search_rounds(result.history, search.baseline, lambda r: round_guard(search, r))
        self.report += lines
        s, target = self.settings, getattr(self.objective, "target", self.objective)
        written = write_preset(self.out, result, s, self.use_strength, target.name, layout=search.layout)
        if written is None:
            return
        found, path = written
        w = effective_scales(found, s.pag_scale)[0]
        self.found = (str(path), str(found), w)
        self.report.append(
            f"Found: **{found}** at w={w:g} (searched with u={s.strength:g}; used at u={self.use_strength:g}, as "
            "the paper recommends). 'Use these heads' copies exactly this."
        )

    def status(self) -> str:
        """Where the search is, in words."""
        seconds = time.monotonic() - self.started
        images = self.search.images if self.search is not None else 0
        if self.state == "done":
            return f"Done in {seconds:.0f} s: {images} images made and scored."
        if self.state == "stopped":
            return f"Stopped after {seconds:.0f} s ({images} images made); the report shows what finished."
        if self.state == "failed":
            return f"Failed after {seconds:.0f} s: {self.error}"
        if self.search is None:
            return "Loading the objective"
        return f"{self.search.status()} · {seconds:.0f} s so far"

    def fraction(self) -> float:
        """How much of the current phase is done (0 to 1)."""
        return self.search.fraction() if self.search is not None else 0.0

    def outputs(self) -> tuple:
        """(head map PNG, report, preset file, heads with u, w, progress) as they stand."""
        return (self.head_map, "\n\n".join(self.report), *self.found, self.status())


# ------------------------------------------------------------------------------------------------------------
# Structured prompts (StructureDiffusion)
# ------------------------------------------------------------------------------------------------------------

OFF = "off"
STRUCTURED_MODEL = ASSETS / "toy-sd15"  # the model on which the official conjunction mode measured a gain

# The README's measurement (section "Structured cross-attention on the toy SD1.5 model"), shown beside the images.
STRUCTURED_EFFECT = (
    "**Measured on the toy SD1.5** (two-object prompts, paired against plain on the same prompt-seed pairs, "
    "95% intervals): **conjunction** raised colour-shape binding on held-in pairings by "
    "**+0.052 [+0.025, +0.080]** (400 pairs); on held-out pairings +0.021 [-0.007, +0.050] (not "
    "distinguishable from 0); it costs 1.6x the time of plain. **key-value**: +0.010 [-0.005, +0.025] "
    "(nothing measurable), at no extra cost. One pair of images is one seed, not the average: expect many seeds "
    "to look alike."
)


def structured_choices(modes: Sequence[str]) -> list[str]:
    """The mode menu from `STRUCTURED_SETTINGS["structured"]`, limited to the model's `modes`: conjunction
    first (the measured gain), then the others, then 'off' (the setting's None)."""
    allowed = [c for c in STRUCTURED_SETTINGS["structured"].choices if c is not None and c in modes]
    return sorted(allowed, key=lambda c: c != "conjunction") + [OFF]


def structured_mode(value, choices: Sequence[str]) -> str | None:
    """The checked menu value as the pipeline's `structured` argument ('off' -> None)."""
    value = choice("Mode", value, choices)
    return None if value == OFF else value


def phrases_markdown(phrases: Sequence[str], mode: str | None) -> str:
    """The noun phrases a structured call encodes alone, in words."""
    if not phrases:
        return "No noun phrase inside the prompt was found: structured attention has nothing to align, so the " \
            "structured image equals the plain one."  # fmt: skip
    used = "each encoded alone and aligned into the prompt" if mode else "(mode off: found, not used)"
    return f"**Noun phrases found** ({used}):\n\n" + "\n".join(f"- {p}" for p in phrases)


def structured_effect(model: str | Path) -> str:
    """The measured effect, and whether it was measured on this model."""
    if Path(model).resolve() == STRUCTURED_MODEL.resolve():
        return STRUCTURED_EFFECT
    return f"{STRUCTURED_EFFECT}\n\nThis tab runs `{display_name(model)}`, which was not measured."


# ------------------------------------------------------------------------------------------------------------
# Novel views: input views, cameras, the shipped toy objects
# ------------------------------------------------------------------------------------------------------------

TOY_OBJECTS = ASSETS / "upfusion-examples"
MAX_VIEW_PIXELS = 4096
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # an uploaded image: at most 10 MiB

# The novel views' inputs: the library's UpFusion settings (`UPFUSION_SETTINGS`), narrowed where the demo must stay
# responsive. Measured on the toy model with one CPU thread: three views take 4 s at 25 steps and 9 s at the
# preset's 50, and every camera or frame is one more row of the diffusion batch, so the demo starts at 25 steps
# and takes at most 12 cameras and 36 frames (12 by default); a turntable shown playing needs two frames.
VIEW_SETTINGS = {
    "views": UPFUSION_SETTINGS["views"],
    "num_inference_steps": UPFUSION_SETTINGS["num_inference_steps"].narrowed(default=25),
    "guidance_scale": UPFUSION_SETTINGS["guidance_scale"],
    # one turn either way names every camera, as on the command line
    "azimuth": UPFUSION_SETTINGS["azimuth"].narrowed(-360, 360),
    "elevation": UPFUSION_SETTINGS["elevation"],
    "frames": UPFUSION_SETTINGS["frames"].narrowed(2, 36, default=12),
    "orbit_elevation": UPFUSION_SETTINGS["orbit_elevation"],
    "frame_ms": UPFUSION_SETTINGS["frame_ms"],
}
MAX_CAMERAS, MAX_FRAMES = 12, int(VIEW_SETTINGS["frames"].high)


def _bytes(n: int) -> str:
    """A file size in words: 10 MiB, 14.6 KiB, 300 bytes."""
    if n >= 2**20:
        return f"{n / 2**20:.3g} MiB"
    return f"{n / 1024:.3g} KiB" if n >= 1024 else f"{n} bytes"


def read_views(files) -> list[Image.Image]:
    """1-6 image files as RGB (transparency on white), all at the first one's size; a file over
    `MAX_UPLOAD_BYTES` or `MAX_VIEW_PIXELS` a side, or one that is not an image, is refused by number."""
    files = [files] if isinstance(files, str) else list(files or [])
    count = VIEW_SETTINGS["views"]
    if not count.low <= len(files) <= count.high:
        raise DemoInputError(
            f"Images: upload {count.low:g} to {count.high:g} images of the object (got {len(files)})"
        )
    images = []
    for i, file in enumerate(files, start=1):
        unreadable = f"Images: file {i} is not an image this demo can read"
        try:
            size = Path(file).stat().st_size
        except (OSError, TypeError, ValueError):
            raise DemoInputError(unreadable) from None
        if size > MAX_UPLOAD_BYTES:
            raise DemoInputError(
                f"Images: file {i} is {_bytes(size)}; allowed: at most {_bytes(MAX_UPLOAD_BYTES)} per image"
            )
        try:
            with Image.open(file) as image:
                width, height = image.size
                if max(width, height) <= MAX_VIEW_PIXELS:
                    image.verify()  # the whole file (a truncated PNG too), before decoding it
        except Image.DecompressionBombError:  # PIL's own size limit, far above ours
            raise DemoInputError(f"Images: image {i} is larger than {MAX_VIEW_PIXELS} px a side") from None
        except (OSError, ValueError, TypeError, SyntaxError):
            raise DemoInputError(unreadable) from None
        if max(width, height) > MAX_VIEW_PIXELS:
            raise DemoInputError(
                f"Images: image {i} is {width}x{height} px; allowed: at most {MAX_VIEW_PIXELS} px a side"
            )
        from pipelines.upfusion import on_white  # torch, on first use

        try:
            with Image.open(file) as image:
                images.append(on_white(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise DemoInputError(unreadable) from None
    return [im.resize(images[0].size) for im in images]


def parse_cameras(text_value) -> list[tuple[float, float]]:
    """'azimuth, elevation; ...' in degrees -> pairs, else DemoInputError naming the input."""
    pairs = [p for p in text("Cameras", text_value, limit=1000).split(";") if p.strip()]
    if not 1 <= len(pairs) <= MAX_CAMERAS:
        raise DemoInputError(f"Cameras: give 1 to {MAX_CAMERAS} 'azimuth, elevation' pairs separated by ';'")
    cameras = []
    for pair in pairs:
        parts = pair.split(",")
        try:
            azimuth, elevation = (float(p) for p in parts)
        except ValueError:
            raise DemoInputError(f"Cameras: cannot read {pair.strip()!r}; write e.g. '90, 15'") from None
        cameras.append(
            (
                setting_of(VIEW_SETTINGS["azimuth"], "Cameras (azimuth)", azimuth),
                setting_of(VIEW_SETTINGS["elevation"], "Cameras (elevation)", elevation),
            )
        )
    return cameras


@dataclass(frozen=True)
class ToyObject:
    """A held-out toy object shipped with its input views (`assets/upfusion-examples`)."""

    name: str
    label: str
    views: tuple[Path, ...]
    cameras: tuple[tuple[float, float], ...] = field(
        default=()
    )  # (azimuth, elevation) each view was taken from


def toy_objects(folder: Path = TOY_OBJECTS) -> list[ToyObject]:
    """The toy objects listed in `folder/examples.json` whose view files exist ([] without the folder)."""
    index = Path(folder) / "examples.json"
    if not index.is_file():
        return []
    found = []
    for entry in json.loads(index.read_text()).get("examples", []):
        views = tuple(Path(folder) / v for v in entry.get("views", []))
        if views and all(v.is_file() for v in views):
            cameras = tuple(zip(entry.get("azimuth", []), entry.get("elevation", []), strict=False))
            found.append(ToyObject(entry["name"], entry.get("label", entry["name"]), views, cameras))
    return found


def turntable_gif(
    frames: Sequence[Image.Image], path: Path, frame_ms: int = UPFUSION_SETTINGS["frame_ms"].default
) -> Path:
    """The frames, enlarged with nearest neighbour to about `SHOWN_PX`, as a looping GIF (it plays where shown)."""
    factor = enlargement(frames[0].size)
    shown = [enlarge(f.convert("RGB"), factor) for f in frames]
    shown[0].save(path, format="GIF", save_all=True, append_images=shown[1:], duration=frame_ms, loop=0)
    return path


def shown_gallery(images: list, captions: list[str]) -> list[tuple[Image.Image, str]]:
    """Gallery items enlarged with nearest neighbour, each caption ending with the native size and the factor."""
    items = []
    for image, caption in zip(images, captions, strict=True):
        factor = enlargement(image.size)
        items.append(
            (enlarge(image, factor), f"{caption} · native {image.width}x{image.height} px, shown {factor}x")
        )
    return items


def input_gallery(files) -> list[tuple[Image.Image, str]]:
    """The input views as the model receives them (RGB, the first one's size), enlarged for the user."""
    if not files:
        return []
    images = read_views(files)
    return shown_gallery(
        images, [f"view {i + 1}{' (reference)' if i == 0 else ''}" for i in range(len(images))]
    )
