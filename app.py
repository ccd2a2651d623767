"""Gradio demo: SoftPAG generation with head selections, guided beside unguided from the same seed; head
search; structured prompts (StructureDiffusion); UpFusion novel views. This file lays the tabs out and wires their
events; what they run, check and record lives in tools/ (`demo`, `demo_model`, `demo_structured`, `demo_views`,
`demo_api`).

python app.py                      # the embedded toy SD3 model, on http://127.0.0.1:7860, no network
python app.py --model stabilityai/stable-diffusion-3-medium-diffusers --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import os
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

from guidance.config import GENERATION_SETTINGS, SEARCH_SETTINGS, STRUCTURED_SETTINGS  # noqa: E402
from guidance.heads import printable  # noqa: E402
from guidance.search import SEARCH_PROFILES  # noqa: E402
from pipelines.loading import ModelFolderError  # noqa: E402
from tools.demo import (  # noqa: E402
    DIFFERENCE_GAIN,
    MAX_PROMPT_CHARS,
    MAX_UPLOAD_BYTES,
    PAG,
    STRUCTURED_MODEL,
    VIEW_SETTINGS,
    DemoInputError,
    Stopped,
)
from tools.demo_api import ApiInput, check_inputs  # noqa: E402
from tools.demo_model import (  # noqa: E402
    CUSTOM,
    DEMO_CFG,
    DEMO_SEED,
    HELP,
    MAX_K,
    MAX_ROUNDS,
    MAX_SEARCH_PROMPTS,
    MAX_SEARCH_SEEDS,
    NO_GUARD,
    PROFILE_HELP,
    SEARCH_K,
    SEARCH_OBJECTIVES,
    SEARCH_ROUNDS,
    STOPPED,
    DemoModel,
    Limits,
    profile_values,
    random_seed,
)
from tools.demo_structured import StructuredModel  # noqa: E402
from tools.demo_views import YOUR_IMAGES, ViewsModel  # noqa: E402
from tools.settings import DEFAULT_MODEL, PRESETS  # noqa: E402

# The CFG sliders' top: the toy models' 3 and the paper's UpFusion 9 inside, in steps a hand can set; the checks
# (and the API) take the whole range.
CFG_SHOWN = 15


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


def reported(progress, **options):
    """Gradio's progress bar as the tools' `progress(value, desc)` (None: no bar)."""
    if progress is None:
        return None
    return lambda value, desc: progress(value, desc=desc, **options)


def _session(request) -> str:
    """The page a request comes from (its Stop is its own)."""
    return getattr(request, "session_hash", None) or "local"


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


# -- HTTP API payloads: checked (tools/demo_api.py) before Gradio's own processing ---------------------------


def api_input(block) -> ApiInput:
    """What an event input takes over the HTTP API, read off its component."""
    label = getattr(block, "api_label", None) or block.label or type(block).__name__
    if isinstance(block, gr.File | gr.Image):
        suffixes = tuple(t.lower() for t in getattr(block, "file_types", None) or () if t.startswith("."))
        multiple = getattr(block, "file_count", "single") != "single"
        read = functools.partial(block.data_model.model_validate, context={"validate_meta": True})
        return ApiInput(label, "files" if multiple else "file", suffixes=suffixes, read_record=read)
    if isinstance(block, gr.Dataset):
        return ApiInput(label, "example", examples=len(block.samples))
    if isinstance(block, gr.Checkbox):
        return ApiInput(label, "bool")
    if isinstance(block, gr.Number | gr.Slider):
        return ApiInput(label, "number")
    if isinstance(block, gr.Radio | gr.Dropdown):
        return ApiInput(
            label, "choice", choices=tuple(c[1] if isinstance(c, tuple) else c for c in block.choices)
        )
    return ApiInput(label, "text" if isinstance(block, gr.Textbox) else "other")


def check_api_inputs(app: gr.Blocks) -> gr.Blocks:
    """`app`, with every event's payloads checked by `tools.demo_api.check_inputs` before Gradio processes them
    (Gradio's own errors would reach a client as {"error": null}); anything Gradio still cannot read is refused
    naming the event."""
    preprocess = app.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        event = f"/{block_fn.api_name or block_fn.name}"
        specs = [None if block.stateful else api_input(block) for block in block_fn.inputs]
        try:
            check_inputs(event, inputs, specs, gr.utils.get_upload_folder())
        except DemoInputError as error:
            raise InputError(str(error)) from None
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
# The tabs' event functions: Gradio values in, tools/ calls, Gradio outputs (skips, warnings, progress) out
# ------------------------------------------------------------------------------------------------------------


class Demo(DemoModel):
    """The Generate and Head search tabs' events around a loaded pipeline (tools/demo_model.py runs them)."""

    def __init__(self, pipe, model: str | Path, limits: Limits = Limits(), name: str | None = None):
        super().__init__(pipe, model, limits, name, presets=PRESETS)  # the shipped presets

    @shows_refusals
    def preset_inputs(self, preset: str) -> tuple[str, float]:
        """(heads, w) that reproduce a preset in the inputs."""
        return self.preset_values(preset)

    @shows_refusals
    def choose_preset(self, preset: str):
        """Picking a preset: its heads and w go into the inputs, and a named preset's recommended head settings
        (or the defaults) into the identity, start, stop, every and branch inputs, so they show what applies."""
        settings = self.preset_head_settings(preset)
        return (*self.chosen_preset(preset), *(settings if settings is not None else (gr.skip(),) * 5))

    @shows_refusals
    def read_preset_file(self, path: str | None):
        """An uploaded preset: its heads and w go into the inputs, and the selection is custom."""
        return self.preset_file_values(path) if path else (gr.skip(),) * 3

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
        """Guided and unguided images from one seed: comparison, difference, PNG files, note, gallery, history,
        seed. Stop ends the run at its next step and says so in the note (the earlier results stay)."""
        run = self.generation(
            prompt, negative_prompt, seed, steps, width, height, guidance_scale, pag_scale, pag_strength,
            pag_identity, pag_start, pag_stop, pag_every, pag_branch, preset, heads,
        )  # fmt: skip
        for warning in run.warnings:
            gr.Warning(warning)
        try:
            images = self.images(run, _session(request), reported(progress, unit="steps"))
        except Stopped:
            gr.Info(STOPPED)
            return (gr.skip(),) * 3 + (run.stopped_note(),) + (gr.skip(),) * 3
        return self.results(run, images, history or [])

    def stop(self, request: gr.Request = None) -> None:
        """Stop this page's running generation at its next step."""
        self.stop_event(_session(request), "generate").set()

    def stop_search(self, request: gr.Request = None) -> None:
        """Stop this page's running head search at its next step."""
        self.stop_event(_session(request), "search").set()

    @shows_refusals
    def reuse(self, history: list, index: int | None):
        """The inputs that made the clicked gallery item."""
        return self.gallery_inputs(history, index)

    def profile_fields(self, profile: str):
        """Choosing a profile: its k and rounds go into the inputs, and its settings are described."""
        return profile_values(profile, self.layout.arch) or (gr.skip(),) * 3

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
        """A head search; yields (head map PNG, report, preset file, heads with u, w, progress) while it runs and
        once at the end."""
        yield from self.search_updates(
            objective, prompts, seeds, k, rounds, steps, sweep, profile, guard, _session(request),
            reported(progress),
        )  # fmt: skip


def selected_index(event: gr.SelectData) -> int:
    """The gallery item the user clicked."""
    return event.index


class StructuredPrompts(StructuredModel):
    """The Structured prompts tab's event (tools/demo_structured.py runs it)."""

    @shows_refusals
    def compare(
        self,
        prompt: str,
        mode: str = "conjunction",
        seed: float = 0,
        steps: float | None = None,
        progress=gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ):
        """Plain and structured images of one seed, the noun phrases and the measured effect."""
        outputs, warnings = self.comparison(prompt, mode, seed, steps, reported(progress))
        for warning in warnings:
            gr.Warning(warning)
        return outputs


class NovelViews(ViewsModel):
    """The Novel views tab's events (tools/demo_views.py runs them)."""

    @shows_refusals
    def pick(self, label: str):
        """Picking a toy object: copies of its views fill the images input, and they are shown."""
        return self.toy_views(label) or (gr.skip(), gr.skip())

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
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom: the pipeline's bars shown)
    ):
        """Novel views: the gallery, and for an orbit the turntable playing and the native GIF."""
        return self.views(files, mode, cameras, frames, elevation, steps, cfg, seed)


# ------------------------------------------------------------------------------------------------------------
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
    head_settings = [ui[k] for k in ("identity", "start", "stop_at", "every", "branch")]
    ui["preset"].input(
        demo.choose_preset, [ui["preset"]], [ui["heads"], ui["pag_scale"], *head_settings], **PRIVATE
    )
    # an input moved by hand makes the call the user's own: "custom", no preset settings filled in behind it
    for edited in ("heads", "pag_scale", "strength", "identity", "start", "stop_at", "every", "branch"):
        ui[edited].input(lambda: CUSTOM, None, [ui["preset"]], **PRIVATE)
    ui["heads"].change(demo.heads_map, [ui["heads"]], [ui["heads_map"]], **PRIVATE)
    ui["random_seed"].click(random_seed, None, [ui["seed"]], **PRIVATE)
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
        demo.profile_fields,
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
            note = gr.Markdown(structured.effect_note(), label="Measured effect", elem_id="structured-note")
            files = gr.File(label="PNG files (native size, settings inside)", file_count="multiple")
    go.click(
        structured.compare,
        [prompt, choose, seed, steps],
        [phrases, made, plain, note, files],
        api_name="structured",
        concurrency_limit=1,
        show_progress_on=[made, plain],
    )


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
    try:
        demo = Demo.load(args.model or str(DEFAULT_MODEL), args.device, args.dtype, limits,
                         name=args.model or "assets/toy-sd3")  # fmt: skip
    except ModelFolderError as error:  # one line naming the folder, the component and what to do
        parser.exit(2, f"app.py: error: {printable(str(error))}\n")
    app = build_app(demo, NovelViews(device=args.device, max_steps=limits.max_steps), structured)
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    app.launch(server_name=args.host, server_port=args.port, show_error=False, max_file_size=MAX_UPLOAD_BYTES)


if __name__ == "__main__":
    main()
