"""Gradio demo: SoftPAG generation with head selections, guided beside unguided from the same seed; head
search; structured prompts (StructureDiffusion); UpFusion novel views. The logic lives in tools/demo.py; this
file lays it out and wires the events.

python app.py                      # the embedded toy SD3 model, on http://127.0.0.1:7860, no network
python app.py --model stabilityai/stable-diffusion-3-medium-diffusers --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import logging
import os
import random
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LOG = logging.getLogger("headhunter.app")

# ------------------------------------------------------------------------------------------------------------
# A quiet console: known library messages dropped where they are emitted (before the libraries load)
# ------------------------------------------------------------------------------------------------------------

from tools.console import before_loading, quiet_console  # noqa: E402

quiet_console()  # the libraries' notices and loading bars off (tools/console.py, as in the CLI) ...
before_loading()  # ... installed now, before gradio and diffusers are imported

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from guidance import HeadSelection, HeadSelectionError, SoftPAGError  # noqa: E402
from guidance.adapters import heads_layout  # noqa: E402
from guidance.config import (  # noqa: E402
    GENERATION_SETTINGS,
    SEARCH_SETTINGS,
    STRUCTURED_SETTINGS,
    Setting,
    SoftPAGConfig,
    check_window,
)
from guidance.heads import printable, short_repr  # noqa: E402
from guidance.search import SEARCH_PROFILES, SearchSettings, search_profile  # noqa: E402
from guidance.swap import denoiser_of  # noqa: E402
from pipelines import HeadHunterPipeline  # noqa: E402
from pipelines.loading import ModelFolderError  # noqa: E402
from tools.demo import (  # noqa: E402
    DEFAULT_PRESET,
    DIFFERENCE_GAIN,
    MAX_PROMPT_CHARS,
    MAX_UPLOAD_BYTES,
    PAG,
    STRUCTURED_MODEL,
    VIEW_SETTINGS,
    DemoInputError,
    SearchRun,
    Stopped,
    choice,
    chosen_heads_png,
    difference,
    display_name,
    enlarge,
    enlargement,
    family_call,
    first_image,
    flat_parameters,
    gallery_items,
    guidance_record,
    input_gallery,
    input_warnings,
    model_sizes,
    parse_cameras,
    parse_heads,
    phrases_markdown,
    preset_fields,
    profile_text,
    prompt_help,
    prompt_reader_problem,
    read_views,
    result_note,
    setting,
    setting_of,
    shown_at,
    shown_gallery,
    structured_choices,
    structured_effect,
    structured_mode,
    text,
    toy_objects,
    turntable_gif,
    unused_head_settings,
    whole,
)
from tools.settings import (  # noqa: E402
    DEFAULT_MODEL,
    PRESETS,
    check_structured,
    image_record,
    model_call_extras,
    png_parameters,
    read_presets,
    recommended_settings,
    record_parameters,
    save_png,
    structured_support,
)

CUSTOM = "custom"
MAX_PRESET_BYTES = 256 * 1024
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
NO_GUARD = "none"
# The demo's search: the library's settings, narrowed so that a search on the toy model ends in minutes (every k
# and round is another sweep of the remaining heads); 5 rounds: the paper profile's.
MAX_SEARCH_PROMPTS, MAX_SEARCH_SEEDS = 8, 4
SEARCH_K = SEARCH_SETTINGS["k"].narrowed(high=8)
SEARCH_ROUNDS = SEARCH_SETTINGS["rounds"].narrowed(high=5)
MAX_K, MAX_ROUNDS = int(SEARCH_K.high), int(SEARCH_ROUNDS.high)
DEMO_SEED = replace(GENERATION_SETTINGS["seed"], low=-1)  # the seed inputs: -1 draws a new seed
DEMO_CFG = GENERATION_SETTINGS["guidance_scale"].narrowed(1, 30)  # the demo's CFG: 1 (off) to 30
# The CFG sliders' top: the toy models' 3 and the paper's UpFusion 9 inside, in steps a hand can set; the checks
# (and the API) take the whole range.
CFG_SHOWN = 15
SEARCH_USE_STRENGTH = SEARCH_SETTINGS["use_strength"].default  # the paper: search with u = 1, use about 0.5

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
    "that head's strength u. 'name: heads; name2: heads' makes groups. Empty: no head guidance (then the "
    "head settings below have no effect).",
    "preset_file": "A preset JSON (for example from the Head search tab). It fills the heads and w.",
}


# ------------------------------------------------------------------------------------------------------------
# Refusals: every bad value is refused with a message that names the input (logged as one line)
# ------------------------------------------------------------------------------------------------------------


class InputError(gr.Error):
    """A refused input: shown to the user, logged as one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)
        LOG.warning("refused: %s", message)


def shows_refusals(function):
    """`function` (an event function, or a generator of outputs) with the tools' `DemoInputError` shown to the
    user as an `InputError`; Gradio still sees the function's own signature."""
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except DemoInputError as error:
                raise InputError(str(error)) from None

        return generator

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DemoInputError as error:
            raise InputError(str(error)) from None

    return wrapper


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
# The demo: a loaded pipeline and the event functions
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; requests beyond are refused with a message naming the input."""

    max_steps: int = 100
    max_size: int = 1024
    queue_size: int = 16
    concurrency: int = 1

    def steps(self) -> Setting:
        """Sampling steps a request may ask for: generation's, at most `max_steps`."""
        return GENERATION_SETTINGS["num_inference_steps"].narrowed(high=self.max_steps)


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "local"


class Demo:
    """A loaded pipeline plus what the UI needs to know about it."""

    def __init__(self, pipe, model: str | Path, limits: Limits = Limits(), name: str | None = None):
        self.pipe, self.model, self.limits = pipe, str(model), limits
        self.name = name or display_name(model)
        problem = prompt_reader_problem(pipe, self.name)
        if problem:
            raise ModelFolderError(problem)
        # The head search's own pipeline: the same components, its own scheduler (diffusers' schedulers keep
        # per-call state; a search and a generation run at the same time).
        self.search_pipe = HeadHunterPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))
        self.search_pipe.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        self.denoiser = denoiser_of(pipe)
        self.layout = heads_layout(self.denoiser)
        self.heads_per_layer = self.layout.heads_per_layer
        settings = recommended_settings(model)
        before_loading(settings.get("max_sequence_length"))  # its T5 length by design: no truncation notice
        self.extras = {**model_call_extras(model), **family_call(pipe)}
        steps, cfg = (GENERATION_SETTINGS[k].default for k in ("num_inference_steps", "guidance_scale"))
        self.default_steps = min(settings.get("num_inference_steps", steps), limits.max_steps)
        self.default_cfg = settings.get("guidance_scale", cfg)
        self.sizes = model_sizes(pipe, settings, limits.max_size)
        self.words = prompt_help(model)
        self.presets = self._compatible_presets()
        self.default_preset = DEFAULT_PRESET if DEFAULT_PRESET in self.presets else CUSTOM
        self.scratch = Path(tempfile.mkdtemp(prefix="headhunter-demo-"))
        self._stops: dict[tuple[str, str], threading.Event] = {}

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

    @shows_refusals
    def preset_inputs(self, preset: str) -> tuple[str, float]:
        """(heads text with every u written out, w) that reproduce a preset in the inputs; ("", default w) for
        custom."""
        if preset == CUSTOM:
            return "", PAG["scale"].default
        return preset_fields(self.presets[choice("Preset", preset, list(self.presets))])

    @shows_refusals
    def choose_preset(self, preset: str):
        """Picking a preset: its heads and w go into the inputs."""
        return self.preset_inputs(choice("Preset", preset, [CUSTOM, *self.presets]))

    @shows_refusals
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
        return (*preset_fields(selection), CUSTOM)

    def heads_map(self, heads_text) -> str | None:
        """The Generate tab's map of the typed heads (None while they cannot be read: no error while typing)."""
        try:
            selection = parse_heads(heads_text, self.heads_per_layer)
        except DemoInputError:
            return None
        name = re.sub(r"[^A-Za-z0-9]+", "-", str(selection or "none"))[:80]
        return str(chosen_heads_png(selection, self.heads_per_layer, self.scratch / f"heads-{name}.png"))

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
        steps = setting_of(self.limits.steps(), "Steps", steps)
        width = self.sizes.check("Width", width, self.sizes.native[1])
        height = self.sizes.check("Height", height, self.sizes.native[0])
        cfg = setting_of(DEMO_CFG, "CFG scale", cfg)
        seed = setting_of(DEMO_SEED, "Seed", seed)
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
        """(selection or None, pag keywords, preset label, unused) from the inputs, checked before any work;
        `unused`: the head settings changed from their defaults while no heads are chosen (they do nothing).

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
        check_window(pag["pag_start"], pag["pag_stop"], InputError, ("Start", "Stop"))
        selection = parse_heads(heads, self.heads_per_layer)
        if selection is None:
            return None, {}, "none", unused_head_settings(pag)
        if pag["pag_branch"] == "uncond":
            del pag["pag_scale"]
        label = self.preset_label(preset, selection, pag)
        if (
            label != CUSTOM
        ):  # the preset's recommended settings, filled as the pipeline fills them (CLI, batch)
            config = SoftPAGConfig.from_call(**pag, pag_heads=self.presets[label])
            pag.update({name: getattr(config, name.removeprefix("pag_")) for name in config.from_preset})
        return selection, dict(pag, pag_heads=selection), label, []

    def _sample(self, call: dict, pag: dict, progress, done: int, total: int, stop: threading.Event):
        """One image; the progress bar counts every step of both passes; Stop ends it at the next step."""
        call = dict(call)
        seed = call.pop("seed")

        def on_step(pipe, i, t, kwargs):
            if stop.is_set():
                raise Stopped
            if progress is not None:
                progress((done + i + 1, total), desc="guided" if pag else "unguided", unit="steps")
            return {}

        try:
            output = self.pipe(
                generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step, **call, **pag
            )
        except (SoftPAGError, HeadSelectionError, ValueError) as error:
            raise InputError(str(error)) from None
        return first_image(output)

    def record(self, call: dict, selection, pag: dict, preset: str) -> dict:
        """What made one image: model by its given name, sampling settings, seed, guidance."""
        call = {k: v for k, v in call.items() if k != "output_type"}
        record = {"model": self.name, **call, **guidance_record(selection, pag)}
        if selection is not None:
            record["pag_preset"] = preset
        return record

    @shows_refusals
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
        """Guided and unguided images from one seed: comparison, difference, PNG files, gallery, note.

        Stop ends the run at its next step and says so in the note (the earlier results stay)."""
        call = self.check_call(
            prompt,
            negative_prompt,
            seed,
            self.default_steps if steps is None else steps,
            self.sizes.native[1] if width is None else width,
            self.sizes.native[0] if height is None else height,
            self.default_cfg if guidance_scale is None else guidance_scale,
        )
        selection, pag, label, unused = self.check_guidance(
            preset, heads, pag_scale, pag_strength, pag_identity, pag_start, pag_stop, pag_every, pag_branch
        )
        warnings = input_warnings(call["prompt"], self.words, unused)
        for warning in warnings:
            gr.Warning(warning)
        stop = self._stop_event(request, "generate", clear=True)
        passes, steps = (2 if selection else 1), call["num_inference_steps"]
        try:
            images = [
                self._sample(call, p, progress, i * steps, passes * steps, stop)
                for i, p in enumerate([pag, {}][2 - passes :])
            ]
        except Stopped:
            gr.Info("Stopped: nothing was made, the earlier results stay.")
            stopped = f"**Stopped** before the {'images were' if passes == 2 else 'image was'} finished: nothing made."
            return (gr.skip(),) * 3 + (stopped,) + (gr.skip(),) * 3
        records = [self.record(call, selection, pag, label), self.record(call, None, {}, label)][2 - passes :]
        return self._results(images, records, history or [], warnings)

    def _stop_event(self, request, kind: str, clear: bool = False) -> threading.Event:
        event = self._stops.setdefault((_session(request), kind), threading.Event())
        if clear:
            event.clear()
        return event

    def stop(self, request: gr.Request = None) -> None:
        """Stop this page's running generation at its next step."""
        self._stop_event(request, "generate").set()

    def stop_search(self, request: gr.Request = None) -> None:
        """Stop this page's running head search at its next step."""
        self._stop_event(request, "search").set()

    def _results(self, images: list, records: list[dict], history: list, warnings: list[str]):
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
        scale_note = shown_at(images[0].size)
        diff = difference(images[0], images[-1]) if len(images) == 2 else Image.new("RGB", images[0].size)
        history = [{"image": files[0], "record": records[0]}, *history][:GALLERY_KEEP]
        note = result_note(records[0], scale_note)
        if warnings:
            note += "\n\n" + "\n\n".join(f"⚠ {w}" for w in warnings)
        return (
            pair,
            enlarge(diff, factor),
            files,
            note,
            gallery_items(history),
            history,
            records[0]["seed"],
        )

    def shown_as(self) -> str:
        """How results are shown, for the labels: the factor where the model makes one size only."""
        if self.sizes.trained_only:
            h, w = self.sizes.native
            return shown_at((w, h))
        return "small images enlarged with nearest neighbour to about 512 px; the note gives the factor"

    @shows_refusals
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

    def search_settings(self, profile: str, prompts: list[str], seeds: int, k: int, rounds: int, steps: int):
        """The search settings: the model's steps, CFG and size < the profile < the user's k, rounds, steps; a
        toy model searches at its trained size whatever the profile says."""
        height, width = self.sizes.native
        defaults = dict(steps=self.default_steps, size=height if height == width else None,
                        guidance_scale=float(self.default_cfg))  # fmt: skip
        size = height if self.sizes.trained_only and height == width else None
        return SearchSettings.from_profile(
            profile, self.layout.arch, prompts, list(range(seeds)), defaults, steps=steps, k=k, rounds=rounds,
            size=size, model=self.name, extra=self.extras,
        )  # fmt: skip

    def check_search(self, objective, prompts, seeds, k, rounds, steps, sweep, profile, guard):
        """(objective, settings) from the checked search inputs, before any work."""
        from guidance.objectives import get_objective

        choice("Objective", objective, SEARCH_OBJECTIVES)
        prompts = text("Prompts", prompts, limit=MAX_SEARCH_PROMPTS * MAX_PROMPT_CHARS)
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not 1 <= len(lines) <= MAX_SEARCH_PROMPTS:
            raise InputError(
                f"Prompts: give 1 to {MAX_SEARCH_PROMPTS} prompts, one per line (got {len(lines)})"
            )
        seeds = whole("Seeds", seeds, 1, MAX_SEARCH_SEEDS)
        k = setting_of(SEARCH_K, "k", k)
        rounds = setting_of(SEARCH_ROUNDS, "Rounds", rounds)
        steps = setting_of(self.limits.steps(), "Steps", self.default_steps if steps is None else steps)
        if not isinstance(sweep, bool):
            raise InputError(f"Head map: {sweep!r} must be true or false")
        profile = choice("Profile", profile, sorted(SEARCH_PROFILES))
        guard = choice("Guard", guard, [NO_GUARD, *SEARCH_OBJECTIVES])
        if guard == objective:
            raise InputError(f"Guard: {guard!r} is the objective itself; choose another guard or 'none'")
        chosen = search_profile(profile, self.layout.arch)
        guard = None if guard == NO_GUARD else guard
        min_score = chosen.min_score(guard)
        max_drop = SEARCH_SETTINGS["max_drop"].default if min_score is None else None
        obj = get_objective(objective, guard, max_drop, min_score, chosen.clip_prefix)
        settings = self.search_settings(profile, lines, seeds, k, rounds, steps)
        settings.objective = obj.name
        return obj, settings

    @shows_refusals
    def search(
        self,
        objective: str,
        prompts: str,
        seeds: float = 2,
        k: float = 4,
        rounds: float = 1,
        steps: float | None = None,
        sweep: bool = True,
        profile: str = "ours",
        guard: str = NO_GUARD,
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ):
        """Run a head search in a worker thread; yields (head map PNG, report, preset file, heads with u, w,
        progress) while it runs (about twice a second when something changed) and once at the end."""
        obj, settings = self.check_search(objective, prompts, seeds, k, rounds, steps, sweep, profile, guard)
        stop = self._stop_event(request, "search", clear=True)
        out = Path(tempfile.mkdtemp(prefix="headhunter-search-"))
        run = SearchRun(
            self.search_pipe, obj, settings, sweep, out, SEARCH_USE_STRENGTH, stop, profile_text(settings)
        )
        worker = threading.Thread(target=run.run, name="headhunter-search", daemon=True)
        worker.start()
        shown = None
        try:
            while worker.is_alive():
                worker.join(0.5)
                outputs = run.outputs()
                if outputs != shown:
                    if progress is not None:
                        progress(run.fraction(), desc=outputs[-1])
                    shown = outputs
                    yield outputs
        finally:
            if (
                worker.is_alive()
            ):  # the page left or the event was cancelled: the worker stops at its next step
                stop.set()
        if isinstance(run.error, SoftPAGError | HeadSelectionError | ValueError):
            raise InputError(str(run.error))
        if run.error is not None:
            raise run.error
        yield run.outputs()


def profile_fields(profile: str, arch: str):
    """Choosing a profile: its k and rounds go into the inputs, and its settings are described."""
    if profile not in SEARCH_PROFILES:
        return gr.skip(), gr.skip(), gr.skip()
    chosen = search_profile(profile, arch)
    return chosen.k, min(chosen.rounds, MAX_ROUNDS), PROFILE_HELP.get(profile, "")


PROFILE_HELP = {
    "ours": "**ours**: CFG at the model's scale, k 4, 1 round, a quarter of the pairs held out to judge each "
    "round (a round that does not beat the best earlier one is not adopted).",
    "paper": "**paper** (the official search's settings): CFG off, w 3, k 3 for 5 rounds, every round adopted, no "
    "validation pairs.",
}


def selected_index(event: gr.SelectData) -> int:
    """The gallery item the user clicked."""
    return event.index


# ------------------------------------------------------------------------------------------------------------
# Structured prompts (StructureDiffusion): the toy SD1.5, loaded on first use
# ------------------------------------------------------------------------------------------------------------


class StructuredPrompts:
    """Structured cross-attention beside plain generation of the same seed, on a model of a family that has it
    (by default the toy SD1.5, where the official conjunction mode measured a gain); loaded on first use."""

    def __init__(self, model: str | Path = STRUCTURED_MODEL, device: str = "cpu", dtype: str = "float32",
                 limits: Limits = Limits()):  # fmt: skip
        self.model, self.name, self.device, self.dtype = str(model), display_name(model), device, dtype
        self.limits, self.pipe, self._lock = limits, None, threading.Lock()
        self.support, self.reason = None, None
        try:
            self.support = structured_support(self.model)
        except Exception as error:  # noqa: BLE001 (a missing or unreadable folder: the tab says why)
            self.reason = f"Structured prompts need the model {self.name} ({printable(str(error))[:200]})."
        if self.support is not None and not self.support.modes:
            self.reason = (
                f"{self.name} is a {self.support.family}, which has no structured cross-attention (SD1.x/2.x and "
                "SDXL have it)."
            )
        self.choices = structured_choices(self.support.modes if self.support else ())
        self.settings = recommended_settings(self.model) if self.support else {}
        self.default_steps = min(self.settings.get("num_inference_steps", 20), limits.max_steps)
        self.words = prompt_help(self.model)

    def _load(self):
        with self._lock:
            if self.pipe is None:
                pipe = HeadHunterPipeline.from_pretrained(self.model, dtype=getattr(torch, self.dtype))
                pipe.set_progress_bar_config(disable=True)
                self.sizes = model_sizes(pipe, self.settings, self.limits.max_size)
                self.pipe = pipe.to(self.device)
        return self.pipe

    @shows_refusals
    def compare(
        self,
        prompt: str,
        mode: str = "conjunction",
        seed: float = 0,
        steps: float | None = None,
        progress=gr.Progress(),
    ):  # noqa: B008 (Gradio's idiom)
        """Plain and structured images of one seed, the noun phrases and the measured effect."""
        from pipelines.structured import structured_phrases

        if self.reason:
            raise InputError(self.reason)
        prompt = text("Prompt", prompt, required=True)
        mode = structured_mode(mode, self.choices)
        try:
            check_structured(mode, self.support, None, "Mode")
        except ValueError as error:
            raise InputError(str(error)) from None
        seed = setting_of(DEMO_SEED, "Seed", seed)
        seed = random.randrange(2**31) if seed == -1 else seed
        steps = setting_of(self.limits.steps(), "Steps", self.default_steps if steps is None else steps)
        phrases = structured_phrases(prompt)
        pipe = self._load()
        height, width = self.sizes.native
        call = dict(
            model_call_extras(self.model),
            prompt=prompt,
            num_inference_steps=steps,
            height=height,
            width=width,
            guidance_scale=self.settings.get("guidance_scale", 7.5),
        )
        passes = 2 if mode else 1

        def image(structured: dict, done: int):
            def on_step(pipe, i, t, kwargs):
                if progress is not None:
                    progress((done + i + 1, passes * steps), desc="structured" if structured else "plain")
                return {}

            generator = torch.Generator().manual_seed(seed)
            return pipe(generator=generator, callback_on_step_end=on_step, **call, **structured).images[0]

        plain = image({}, 0)
        made = image({"structured": mode}, steps) if mode else None
        out = Path(tempfile.mkdtemp(prefix="headhunter-structured-"))
        files = []
        for picture, name, extra in (
            (made, "structured", {"structured": mode, "noun_phrases": phrases}),
            (plain, "plain", {}),
        ):
            if picture is not None:
                record = image_record(self.model, {"seed": seed, **call, **extra})
                path = out / f"{name}-seed{seed}.png"
                save_png(picture, path, record_parameters(record), record)
                files.append(str(path))
        shown = shown_at(plain.size)
        factor = enlargement(plain.size)
        what = f"structured: {mode}" if mode else "structured: off, only the plain image is made"
        note = f"seed {seed} · {steps} steps · {what} · {shown}\n\n{structured_effect(self.model)}"
        for warning in input_warnings(prompt, self.words, []):
            gr.Warning(warning)
            note += f"\n\n⚠ {warning}"
        structured_image = enlarge(made, factor) if made is not None else None
        return phrases_markdown(phrases, mode), structured_image, enlarge(plain, factor), note, files


# ------------------------------------------------------------------------------------------------------------
# Novel views (UpFusion): loaded on first use, only where its weights exist
# ------------------------------------------------------------------------------------------------------------

UPFUSION = Path(DEFAULT_MODEL).parent / "toy-upfusion"
YOUR_IMAGES = "(your own images)"


class NovelViews:
    """UpFusion novel views for the demo: checks, lazy loading, the toy-object picker, views and turntable."""

    def __init__(self, folder: Path = UPFUSION, device: str = "cpu", max_steps: int = Limits.max_steps):
        self.folder, self.device, self.max_steps = Path(folder), device, max_steps
        steps = VIEW_SETTINGS["num_inference_steps"]
        self.steps = steps.narrowed(high=max_steps, default=min(steps.default, max_steps))
        self.pipe, self._lock = None, threading.Lock()
        self.objects = {o.label: o for o in toy_objects()}

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

    def default_cfg(self) -> float | None:
        """The CFG scale the folder's pipeline uses by default (its preset's), read without loading it; None where
        the tab cannot run."""
        if self.unavailable():
            return None
        from pipelines.upfusion import folder_sampling

        return folder_sampling(self.folder)[1]

    def _load(self):
        with self._lock:
            if self.pipe is None:
                from pipelines.upfusion import UpFusionPipeline

                self.pipe = UpFusionPipeline.from_pretrained(str(self.folder)).to(self.device)
        return self.pipe

    @shows_refusals
    def pick(self, label: str):
        """Picking a toy object: copies of its views fill the images input, and they are shown."""
        if label == YOUR_IMAGES:
            return gr.skip(), gr.skip()
        toy = self.objects[choice("Toy object", label, list(self.objects))]
        folder = Path(tempfile.mkdtemp(prefix="headhunter-toy-"))
        files = [str(shutil.copy(view, folder / f"{toy.name}-{view.name}")) for view in toy.views]
        return files, input_gallery(files)

    def input_views(self, files):
        """The images input shown enlarged (nothing while it cannot be read: the run says why)."""
        try:
            return input_gallery(files)
        except DemoInputError:
            return []

    @shows_refusals
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
        """Novel views of the object: a gallery (enlarged, captions with the native size), and for an orbit the
        turntable shown playing (an enlarged GIF) and the native GIF to download."""
        reason = self.unavailable()
        if reason:
            raise InputError(reason)
        mode = choice("Mode", mode, ("views", "orbit"))
        images = read_views(files)
        steps = setting_of(self.steps, "Steps", steps)
        cfg = setting_of(VIEW_SETTINGS["guidance_scale"], "CFG scale", cfg)
        seed = setting_of(GENERATION_SETTINGS["seed"], "Seed", seed)
        call = dict(
            num_inference_steps=steps, guidance_scale=cfg, generator=torch.Generator().manual_seed(seed)
        )
        if mode == "views":
            queries = parse_cameras(cameras)
            views = self._load()(images=images, query_cameras=queries, **call).images
            captions = [f"azimuth {a:g}°, elevation {e:g}°" for a, e in queries]
            return shown_gallery(views, captions), None, None
        frames = setting_of(VIEW_SETTINGS["frames"], "Frames", frames)
        elevation = setting_of(VIEW_SETTINGS["orbit_elevation"], "Elevation", elevation)
        from pipelines.upfusion import orbit

        out = Path(tempfile.mkdtemp(prefix="headhunter-orbit-"))
        gif = out / "orbit.gif"
        views = orbit(self._load(), images, frames=frames, elevation=elevation, gif_path=str(gif), **call)
        playing = turntable_gif(views, out / "turntable-shown.gif")
        return shown_gallery(views, [f"frame {i + 1}" for i in range(len(views))]), str(playing), str(gif)


# ------------------------------------------------------------------------------------------------------------
# The UI
# ------------------------------------------------------------------------------------------------------------

PRIVATE = dict(api_visibility="private", queue=False)


def _pag_slider(name: str, label: str, low: float, high: float, step: float, value=None):
    """A slider over [low, high], a part of the setting's range (the checks take the whole range: the API and a
    preset's values may lie beyond the slider), starting at the setting's default."""
    s = PAG[name].narrowed(low, high)
    return Slider(
        s.low, s.high, value=s.default if value is None else value, step=step, label=label, info=s.help
    )


def build_app(
    demo: Demo, views: NovelViews | None = None, structured: StructuredPrompts | None = None
) -> gr.Blocks:
    """The Blocks UI around a `Demo`: Generate, Head search, Structured prompts and Novel views tabs."""
    views = views or NovelViews(max_steps=demo.limits.max_steps)
    structured = structured or StructuredPrompts(limits=demo.limits)
    with gr.Blocks(title="HeadHunter") as app:
        gr.Markdown(f"# HeadHunter · SoftPAG\nModel: `{demo.name}` · sizes: {demo.sizes.describe()}")
        with gr.Tab("Generate"):
            ui = _generate_tab(demo)
        with gr.Tab("Head search"):
            _search_tab(demo, ui)
        with gr.Tab("Structured prompts"):
            _structured_tab(structured)
        with gr.Tab("Novel views"):
            _novel_views_tab(views)
        ui["stop"].click(demo.stop, None, None, **PRIVATE)
    return check_api_inputs(app)


def _generate_inputs(demo: Demo) -> dict:
    """The Generate tab's inputs, each with plain-words help."""
    ui = {}
    ui["prompt"] = Textbox(
        elem_id="prompt",
        label="Prompt",
        value=demo.words.two_objects(),
        info=HELP["prompt"],
        max_length=MAX_PROMPT_CHARS,
    )
    ui["negative"] = Textbox(label="Negative prompt", value="", info=HELP["negative"])
    with gr.Row():
        ui["seed"] = Number(elem_id="seed", label="Seed", value=DEMO_SEED.default, step=1, info=HELP["seed"])
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
    ui["cfg"] = Slider(
        DEMO_CFG.low, CFG_SHOWN, value=demo.default_cfg, step=0.5, label="CFG scale", info=HELP["cfg"]
    )
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
    with gr.Accordion("More head settings (no effect without heads)", open=False):
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
    ui["heads_map"] = gr.Image(
        elem_id="heads-map",
        label="Chosen heads",
        show_label=False,  # the picture has its title and legend
        value=demo.heads_map(heads),
        type="filepath",
        interactive=False,
    )
    with gr.Accordion("Vocabulary (words the model was trained on)", open=False):
        gr.Markdown(demo.words.describe())
    return ui


def _generate_tab(demo: Demo) -> dict:
    """Inputs, results, gallery and their events."""
    with gr.Row():
        with gr.Column():
            ui = _generate_inputs(demo)
        with gr.Column():
            shown = demo.shown_as()
            ui["comparison"] = gr.ImageSlider(
                elem_id="comparison",
                label=f"Guided | unguided, same seed: opens on the guided image, drag to compare ({shown})",
                type="pil",
                format="png",
                slider_position=100,
            )
            ui["difference"] = gr.Image(
                label=f"Difference |guided - unguided| x{DIFFERENCE_GAIN}, black = same ({shown})",
                type="pil",
                format="png",
            )
            ui["note"] = gr.Markdown(label="About this result", elem_id="note")
            ui["files"] = gr.File(label="PNG files (native size, settings inside)", file_count="multiple")
            ui["gallery"] = gr.Gallery(
                elem_id="gallery", label="Results since the page opened", columns=4, height=260
            )
            ui["reuse"] = gr.Button("Reuse these settings (click an image first)")
    if demo.words.examples:
        gr.Examples(
            [[p] for p in demo.words.examples], [ui["prompt"]], label="Prompts this model understands"
        )
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
    ui["run"].click(
        demo.generate,
        [*inputs, history],
        [ui["comparison"], ui["difference"], ui["files"], ui["note"], ui["gallery"], history, last_seed],
        api_name="generate",
        concurrency_limit=demo.limits.concurrency,
        show_progress_on=[ui["comparison"]],
    )
    _wire_generate_inputs(demo, ui, inputs, history, picked, last_seed)
    return ui


def _wire_generate_inputs(demo: Demo, ui: dict, inputs: list, history, picked, last_seed) -> None:
    """Preset <-> heads/w, the heads map, seed buttons, gallery reuse, preset upload (none an API endpoint)."""
    ui["preset"].input(demo.choose_preset, [ui["preset"]], [ui["heads"], ui["pag_scale"]], **PRIVATE)
    for edited in ("heads", "pag_scale", "strength"):
        ui[edited].input(lambda: CUSTOM, None, [ui["preset"]], **PRIVATE)
    ui["heads"].change(demo.heads_map, [ui["heads"]], [ui["heads_map"]], **PRIVATE)
    ui["random_seed"].click(lambda: random.randrange(2**31), None, [ui["seed"]], **PRIVATE)
    ui["last_seed"].click(lambda s: gr.skip() if s is None else s, [last_seed], [ui["seed"]], **PRIVATE)
    ui["gallery"].select(selected_index, None, [picked], **PRIVATE)
    reused = [i for i in inputs if i is not ui["strength"]]
    ui["reuse"].click(demo.reuse, [history, picked], reused, **PRIVATE)
    ui["preset_file"].upload(
        demo.read_preset_file, [ui["preset_file"]], [ui["heads"], ui["pag_scale"], ui["preset"]], **PRIVATE
    )


def _search_inputs(demo: Demo) -> dict:
    """The Head search tab's inputs."""
    ui = {}
    ui["objective"] = Dropdown(
        list(SEARCH_OBJECTIVES),
        value="toy-dark",
        label="Objective",
        info="What the search tries to raise (toy-* use the toy world's evaluator).",
    )
    with gr.Row():
        ui["profile"] = Radio(
            sorted(SEARCH_PROFILES),
            value="ours",
            label="Profile",
            elem_id="search-profile",
            info="Named search settings; picking one fills k and rounds.",
        )
        ui["guard"] = Dropdown(
            [NO_GUARD, *SEARCH_OBJECTIVES],
            value=NO_GUARD,
            label="Guard",
            info=f"Keep this objective within {SEARCH_SETTINGS['max_drop'].default:g} of the unguided images; a "
            "head set that drops it more scores -inf (the report says why).",
        )
    ui["profile_note"] = gr.Markdown(PROFILE_HELP["ours"])
    ui["prompts"] = named(
        Textbox(
            elem_id="search-prompts",
            label=f"Prompts (one per line, at most {MAX_SEARCH_PROMPTS})",
            lines=4,
            value="a blue square\na yellow triangle on the left and a green circle on the right",  # pairings it was trained on
            info="The search scores heads on these prompts.",
        ),
        "Prompts",
    )
    with gr.Row():
        ui["seeds"] = named(
            Number(
                elem_id="search-seeds",
                label="Seeds per prompt",
                value=2,
                step=1,
                info=f"1 to {MAX_SEARCH_SEEDS}.",
            ),
            "Seeds",
        )
        ui["k"] = named(
            Number(
                elem_id="search-k",
                label="Heads per round k",
                value=SEARCH_K.default,
                step=1,
                info=f"{SEARCH_K.help[:-1]}, 1 to {MAX_K}.",
            ),
            "k",
        )
        ui["rounds"] = Number(
            elem_id="search-rounds",
            label="Rounds",
            value=SEARCH_ROUNDS.default,
            step=1,
            info=f"{SEARCH_ROUNDS.help[:-1]}, 1 to {MAX_ROUNDS}.",
        )
        ui["steps"] = Number(
            elem_id="search-steps",
            label="Steps",
            value=demo.default_steps,
            step=1,
            info="Denoising steps per image.",
        )
    ui["sweep"] = Checkbox(label="Head map", value=True, info="Score every head alone first (slower).")
    with gr.Row():
        ui["go"] = gr.Button("Search", variant="primary")
        ui["stop"] = gr.Button("Stop search", variant="stop")
    return ui


def _search_tab(demo: Demo, generate_ui: dict) -> None:
    """Head search: objective, guard, profile, prompts, greedy rounds; progress while it runs; the head map
    with its legend, the report, and 'Use these heads'."""
    with gr.Row():
        with gr.Column():
            ui = _search_inputs(demo)
        with gr.Column():
            status = gr.Textbox(
                elem_id="search-status",
                label="Progress",
                value="Not started. A search on the toy model takes a minute or two; progress shows here.",
                lines=2,
                interactive=False,
            )
            head_map = gr.Image(label="Head map", show_label=False, type="filepath", elem_id="search-map")
            report = gr.Markdown(label="Search report", elem_id="search-report", min_height=60)
            found = gr.File(label="Found preset (JSON)")
            found_heads = gr.Textbox(elem_id="found-heads", label="Found heads (with u)", interactive=False)
            found_w = gr.Number(label="Found w", interactive=False)
            use = gr.Button("Use these heads in the Generate tab")
    ui["profile"].change(
        lambda p: profile_fields(p, demo.layout.arch),
        [ui["profile"]],
        [ui["k"], ui["rounds"], ui["profile_note"]],
        **PRIVATE,
    )
    keys = ("objective", "prompts", "seeds", "k", "rounds", "steps", "sweep", "profile", "guard")
    ui["go"].click(
        demo.search,
        [ui[k] for k in keys],
        [head_map, report, found, found_heads, found_w, status],
        api_name="search",
        concurrency_limit=demo.limits.concurrency,
        show_progress_on=[head_map],
    )
    ui["stop"].click(demo.stop_search, None, None, **PRIVATE)
    use.click(
        lambda h, w: (h, w, CUSTOM) if h else (gr.skip(),) * 3,
        [found_heads, found_w],
        [generate_ui["heads"], generate_ui["pag_scale"], generate_ui["preset"]],
        api_visibility="private",
    )


def _structured_tab(structured: StructuredPrompts) -> None:
    """Structured prompts: prompt, mode, seed; the noun phrases, structured beside plain, the measured effect."""
    mode = STRUCTURED_SETTINGS["structured"]
    gr.Markdown(
        structured.reason
        or f"Structured cross-attention (StructureDiffusion) on `{structured.name}`, loaded when first used. "
        "Each noun phrase of the prompt is encoded alone and aligned into the prompt's encoding, to keep "
        "colours with their shapes. The plain image is the same call with structured attention off."
    )
    examples = structured.words.examples
    with gr.Row():
        with gr.Column():
            prompt = Textbox(
                elem_id="structured-prompt",
                label="Prompt",
                value=structured.words.two_objects() or "a red car with a blue hat",
                info="Two objects with their own colours show what it is for.",
                max_length=MAX_PROMPT_CHARS,
            )
            choose = Radio(
                structured.choices,
                value=structured.choices[0],
                label="Mode",
                elem_id="structured-mode",
                info=f"{mode.help} ('off' is the setting's None.)",
            )
            with gr.Row():
                seed = Number(
                    elem_id="structured-seed",
                    label="Seed",
                    value=DEMO_SEED.default,
                    step=1,
                    info=HELP["seed"],
                )
                steps = Number(
                    elem_id="structured-steps",
                    label="Steps",
                    value=structured.default_steps,
                    step=1,
                    info=f"{HELP['steps']} 1 to {structured.limits.max_steps}.",
                )
            go = gr.Button("Compare", variant="primary", interactive=structured.reason is None)
            if examples:
                gr.Examples([[p] for p in examples], [prompt], label="Prompts this model understands")
        with gr.Column():
            phrases = gr.Markdown(label="Noun phrases", elem_id="structured-phrases", min_height=40)
    with gr.Row():
        made = gr.Image(
            label="Structured (the mode chosen; empty when off)",
            type="pil",
            format="png",
            elem_id="structured-image",
        )
        plain = gr.Image(
            label="Plain (same seed, structured off)", type="pil", format="png", elem_id="plain-image"
        )
        with gr.Column():
            note = gr.Markdown(_effect_note(structured), label="Measured effect", elem_id="structured-note")
            files = gr.File(label="PNG files (native size, settings inside)", file_count="multiple")
    go.click(
        structured.compare,
        [prompt, choose, seed, steps],
        [phrases, made, plain, note, files],
        api_name="structured",
        concurrency_limit=1,
        show_progress_on=[made, plain],
    )


def _effect_note(structured: StructuredPrompts) -> str:
    """The measured effect shown before the first comparison."""
    return structured_effect(structured.model) if structured.support else ""


def _novel_views_tab(views: NovelViews) -> None:
    """UpFusion: pick a toy object or upload views, choose cameras or an orbit; gallery and turntable."""
    reason = views.unavailable()
    gr.Markdown(
        reason
        or "Novel views of an object from 1-6 photos without camera poses (UpFusion). Cameras are "
        "relative to the first photo: azimuth turns around the object, elevation looks from above."
    )
    with gr.Row():
        with gr.Column():
            picker = named(
                Dropdown(
                    [YOUR_IMAGES, *views.objects],
                    value=YOUR_IMAGES,
                    label="Toy object (held out from training)",
                    elem_id="toy-object",
                    info="Picking one fills the images below with its six views.",
                ),
                "Toy object",
            )
            files = named(
                gr.File(
                    label=f"Images of the object (1-6, at most {MAX_UPLOAD_BYTES // 2**20} MiB each)",
                    file_count="multiple",
                    file_types=["image"],
                    type="filepath",
                    elem_id="views-files",
                ),
                "Images",
            )
            inputs = gr.Gallery(
                label="Input views, as the model receives them (enlarged, nearest neighbour)",
                columns=6,
                height=170,
                elem_id="input-views",
            )
            mode = Radio(
                ["views", "orbit"],
                value="views",
                label="Mode",
                elem_id="views-mode",
                info="'views': the cameras below; 'orbit': a full turn, shown playing.",
            )
            cameras = Textbox(
                label="Cameras",
                value="90, 15; 180, 15; 270, 15",
                info="'azimuth, elevation' in degrees, pairs separated by ';'.",
            )
            with gr.Row():
                frames = Number(
                    label="Frames",
                    value=VIEW_SETTINGS["frames"].default,
                    step=1,
                    info=f"Orbit frames, {VIEW_SETTINGS['frames'].low:g} to {VIEW_SETTINGS['frames'].high:g}.",
                    elem_id="views-frames",
                )
                elevation = Number(
                    label="Elevation",
                    value=VIEW_SETTINGS["orbit_elevation"].default,
                    info=VIEW_SETTINGS["orbit_elevation"].help,
                    elem_id="views-elevation",
                )
            with gr.Row():
                steps = Number(
                    label="Steps",
                    value=views.steps.default,
                    step=1,
                    info="Denoising steps.",
                    elem_id="views-steps",
                )
                cfg = Slider(
                    VIEW_SETTINGS["guidance_scale"].low, CFG_SHOWN, value=views.default_cfg(), step=0.5,
                    label="CFG scale", info="How closely to follow the photos.", elem_id="views-cfg",
                )  # fmt: skip
                seed = Number(
                    label="Seed",
                    value=GENERATION_SETTINGS["seed"].default,
                    step=1,
                    info="The same seed gives the same views.",
                    elem_id="views-seed",
                )
            go = gr.Button("Make views", variant="primary", interactive=reason is None)
        with gr.Column():
            gallery = gr.Gallery(
                label="Novel views (enlarged, nearest neighbour; captions give the native size)",
                columns=4,
                elem_id="views-gallery",
            )
            turntable = gr.Image(
                label="Turntable (plays; enlarged, nearest neighbour)",
                type="filepath",
                interactive=False,
                elem_id="turntable",
            )
            gif = gr.File(label="Turntable GIF (native size)")
    picker.input(views.pick, [picker], [files, inputs], **PRIVATE)
    files.change(views.input_views, [files], [inputs], **PRIVATE)
    go.click(
        views.run,
        [files, mode, cameras, frames, elevation, steps, cfg, seed],
        [gallery, turntable, gif],
        api_name="novel_views",
        concurrency_limit=1,
        show_progress_on=[gallery],
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model, serve the app."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hub id or folder (default: the toy SD3 model)")
    parser.add_argument(
        "--structured-model",
        default=None,
        help="the Structured prompts tab's model, an SD1.x/2.x or SDXL folder (default: the toy SD1.5 model); "
        "loaded when the tab is first used",
    )
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
    limits = Limits(args.max_steps, args.max_size, args.queue_size)
    structured = StructuredPrompts(args.structured_model or STRUCTURED_MODEL, args.device, args.dtype, limits)
    if args.structured_model and structured.reason:
        parser.exit(2, f"app.py: error: --structured-model {args.structured_model}: {structured.reason}\n")
    model = args.model or str(DEFAULT_MODEL)
    before_loading(recommended_settings(model).get("max_sequence_length"))
    try:
        pipe = HeadHunterPipeline.from_pretrained(model, dtype=getattr(torch, args.dtype)).to(args.device)
        pipe.set_progress_bar_config(disable=True)
        demo = Demo(pipe, model, limits, name=args.model or "assets/toy-sd3")
    except ModelFolderError as error:  # one line naming the folder, the component and what to do
        parser.exit(2, f"app.py: error: {printable(str(error))}\n")
    app = build_app(demo, NovelViews(device=args.device, max_steps=limits.max_steps), structured)
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    app.launch(server_name=args.host, server_port=args.port, show_error=False, max_file_size=MAX_UPLOAD_BYTES)


if __name__ == "__main__":
    main()
