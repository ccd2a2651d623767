"""The demo's Generate and Head search tabs without Gradio (app.py lays them out and wires their events): the
loaded model and what the tabs may ask of it (`Limits`), its presets, the checked call of a request, the guided
and unguided images of one seed, their records, PNG files and gallery, a gallery item's inputs given back, and a
head search run in a worker thread and followed while it runs.

Refusals are `DemoInputError`s naming the input as the UI labels it; progress is reported through a plain
`progress(value, desc)` (value: a fraction or (done, total)), and Stop is a `threading.Event` per page and kind.
"""

from __future__ import annotations

import copy
import random
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from guidance import HeadSelection, HeadSelectionError, SoftPAGError
from guidance.adapters import heads_layout
from guidance.config import GENERATION_SETTINGS, SEARCH_SETTINGS, Setting, SoftPAGConfig, check_window
from guidance.heads import printable
from guidance.search import SEARCH_PROFILES, SearchSettings, search_profile
from guidance.swap import denoiser_of
from pipelines import HeadHunterPipeline
from pipelines.loading import ModelFolderError
from tools.console import before_loading
from tools.demo import (
    DEFAULT_PRESET,
    MAX_PROMPT_CHARS,
    PAG,
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
    input_warnings,
    model_sizes,
    parse_heads,
    preset_fields,
    profile_text,
    prompt_help,
    prompt_reader_problem,
    result_note,
    setting,
    setting_of,
    shown_at,
    text,
    unused_head_settings,
    whole,
)
from tools.search_run import search_objective
from tools.settings import (
    PRESETS,
    model_call_extras,
    pipeline_call,
    png_parameters,
    read_presets,
    recommended_settings,
    save_png,
    search_with_true_cfg,
    with_true_cfg,
)

Progress = Callable[[object, str], None]  # progress(a fraction or (done, total), what is running)

CUSTOM = "custom"
MAX_PRESET_BYTES = 256 * 1024
GALLERY_KEEP = 24
STOPPED = "Stopped: nothing was made, the earlier results stay."

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

PROFILE_HELP = {
    "ours": "**ours**: CFG at the model's scale, k 4, 1 round, a quarter of the pairs held out to judge each "
    "round (a round that does not beat the best earlier one is not adopted).",
    "paper": "**paper** (the official search's settings): CFG off, w 3, k 3 for 5 rounds, every round adopted, no "
    "validation pairs.",
}


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


def random_seed() -> int:
    """A new seed (what -1 asks for)."""
    return random.randrange(2**31)


def checked_seed(seed) -> int:
    """A seed input checked (`DEMO_SEED`), -1 drawn here."""
    seed = setting_of(DEMO_SEED, "Seed", seed)
    return random_seed() if seed == -1 else seed


def profile_values(profile: str, arch: str) -> tuple[int, int, str] | None:
    """Choosing a search profile: its k and rounds for the inputs and its description (None: not a profile)."""
    if profile not in SEARCH_PROFILES:
        return None
    chosen = search_profile(profile, arch)
    return chosen.k, min(chosen.rounds, MAX_ROUNDS), PROFILE_HELP.get(profile, "")


# A pipeline's refusals of a checked request (the heads, a setting): shown as the input's, not as a failure
PIPELINE_REFUSALS = (SoftPAGError, HeadSelectionError, ValueError)


@dataclass
class Generation:
    """One checked Generate request: the pipeline call (its seed drawn), the guidance, the preset label that
    made it, and the warnings to show."""

    call: dict
    selection: HeadSelection | None
    pag: dict
    preset: str
    warnings: list[str]

    @property
    def passes(self) -> int:
        """Images to make: guided and unguided, or unguided only (no heads)."""
        return 2 if self.selection else 1

    def stopped_note(self) -> str:
        """The note of a run stopped before its images were finished."""
        made = "images were" if self.passes == 2 else "image was"
        return f"**Stopped** before the {made} finished: nothing made."


class DemoModel:
    """A loaded pipeline plus what the UI needs to know about it."""

    def __init__(self, pipe, model: str | Path, limits: Limits = Limits(), name: str | None = None,
                 presets: Path = PRESETS):  # fmt: skip
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
        self.presets = self._compatible_presets(presets)
        self.default_preset = DEFAULT_PRESET if DEFAULT_PRESET in self.presets else CUSTOM
        self.scratch = Path(tempfile.mkdtemp(prefix="headhunter-demo-"))
        self._stops: dict[tuple[str, str], threading.Event] = {}

    @classmethod
    def load(
        cls, model: str | Path, device: str, dtype: str, limits: Limits = Limits(), name: str | None = None
    ):
        """The model `model` (a folder or hub id) loaded on `device` in `dtype` (a torch dtype's name), without its
        loading bars or the truncation notice at its trained T5 length; a folder that cannot serve raises
        `ModelFolderError` naming the folder, the component and what to do."""
        before_loading(recommended_settings(model).get("max_sequence_length"))
        pipe = HeadHunterPipeline.from_pretrained(model, dtype=getattr(torch, dtype)).to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, model, limits, name=name)

    def _compatible_presets(self, folder: Path) -> dict[str, HeadSelection]:
        """Presets in `folder` whose heads exist in the loaded model: name -> selection. Each file is read alone;
        broken ones (`read_presets`) are kept in `broken_presets` (name -> why) for the menu's note."""
        found, self.broken_presets = {}, {}
        for preset in read_presets(folder):
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

    def preset_values(self, preset: str) -> tuple[str, float]:
        """(heads text with every u written out, w) that reproduce a preset in the inputs; ("", default w) for
        custom."""
        if preset == CUSTOM:
            return "", PAG["scale"].default
        return preset_fields(self.presets[choice("Preset", preset, list(self.presets))])

    def chosen_preset(self, preset: str) -> tuple[str, float]:
        """Picking a preset in the menu (custom or a compatible one): its heads and w for the inputs."""
        return self.preset_values(choice("Preset", preset, [CUSTOM, *self.presets]))

    def preset_head_settings(self, preset: str) -> tuple | None:
        """(identity, start, stop, every, branch) a named preset's call uses: its recommended `"settings"`, the
        defaults for the others, so the inputs show what will apply; None for custom (the inputs stay)."""
        if choice("Preset", preset, [CUSTOM, *self.presets]) == CUSTOM:
            return None
        recommended = self.presets[preset].metadata.get("settings", {})
        names = ("pag_identity", "pag_start", "pag_stop", "pag_every", "pag_branch")
        return tuple(recommended.get(name, PAG[name.removeprefix("pag_")].default) for name in names)

    def preset_file_values(self, path: str) -> tuple[str, float, str]:
        """An uploaded preset: (its heads, its w, "custom"), read with the shipped presets' checks."""
        file = Path(path)
        try:
            if file.suffix.lower() != ".json" or file.stat().st_size > MAX_PRESET_BYTES:
                raise DemoInputError("Preset file: upload a .json preset of at most 256 KiB")
        except OSError:
            raise DemoInputError("Preset file: the upload cannot be read; upload it again") from None
        try:  # the shipped presets' checks: strict JSON, bounded depth and size, the preset schema
            selection = HeadSelection.parse(HeadSelection.load(file, "Preset file"), "Preset file")
            selection.validate(self.heads_per_layer, "Preset file")
        except HeadSelectionError as error:
            raise DemoInputError(printable(str(error))) from None
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
        heads, w = self.preset_values(preset)
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
        seed = checked_seed(seed)
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
        return with_true_cfg(call, self.pipe)  # a true-CFG model's CFG is the slider's

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
        check_window(pag["pag_start"], pag["pag_stop"], DemoInputError, ("Start", "Stop"))
        selection = parse_heads(heads, self.heads_per_layer)
        if selection is None:
            return None, {}, "none", unused_head_settings(pag)
        if pag["pag_branch"] == "uncond":
            del pag["pag_scale"]
        label = self.preset_label(preset, selection, pag)
        # a preset's recommended settings, filled as the pipeline fills them (CLI, batch)
        if label != CUSTOM:
            config = SoftPAGConfig.from_call(**pag, pag_heads=self.presets[label])
            pag.update({name: getattr(config, name.removeprefix("pag_")) for name in config.from_preset})
        return selection, dict(pag, pag_heads=selection), label, []

    def generation(
        self,
        prompt,
        negative_prompt,
        seed,
        steps,
        width,
        height,
        guidance_scale,
        pag_scale,
        pag_strength,
        pag_identity,
        pag_start,
        pag_stop,
        pag_every,
        pag_branch,
        preset,
        heads,
    ) -> Generation:
        """A Generate request checked before any work (None: the model's default steps, size or CFG)."""
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
        return Generation(call, selection, pag, label, input_warnings(call["prompt"], self.words, unused))

    def images(self, run: Generation, session: str, progress: Progress | None) -> list[Image.Image]:
        """The images of `run` (guided, then unguided; unguided only without heads); this page's Stop ends them
        at the next step (`Stopped`)."""
        stop = self.stop_event(session, "generate", clear=True)
        passes, steps = run.passes, run.call["num_inference_steps"]
        return [
            self._sample(run.call, p, progress, i * steps, passes * steps, stop)
            for i, p in enumerate([run.pag, {}][2 - passes :])
        ]

    def _sample(self, call: dict, pag: dict, progress, done: int, total: int, stop: threading.Event):
        """One image; the progress bar counts every step of both passes; Stop ends it at the next step."""
        call = dict(call)
        seed = call.pop("seed")

        def on_step(pipe, i, t, kwargs):
            if stop.is_set():
                raise Stopped
            if progress is not None:
                progress((done + i + 1, total), "guided" if pag else "unguided")
            return {}

        try:
            output = self.pipe(
                generator=torch.Generator().manual_seed(seed),
                callback_on_step_end=on_step,
                **pipeline_call(call, self.pipe),
                **pag,
            )
        except PIPELINE_REFUSALS as error:
            raise DemoInputError(str(error)) from None
        return first_image(output)

    def record(self, call: dict, selection, pag: dict, preset: str) -> dict:
        """What made one image: model by its given name, sampling settings, seed, guidance."""
        call = {k: v for k, v in call.items() if k != "output_type"}
        record = {"model": self.name, **call, **guidance_record(selection, pag)}
        if selection is not None:
            record["pag_preset"] = preset
        return record

    def results(self, run: Generation, images: list, history: list):
        """The outputs: comparison pair, difference, PNG files, note, gallery, its history, the seed."""
        guided = self.record(run.call, run.selection, run.pag, run.preset)
        records = [guided, self.record(run.call, None, {}, run.preset)][2 - run.passes :]
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
        if run.warnings:
            note += "\n\n" + "\n\n".join(f"⚠ {w}" for w in run.warnings)
        return (
            pair,
            enlarge(diff, factor),
            files,
            note,
            gallery_items(history),
            history,
            records[0]["seed"],
        )

    def stop_event(self, session: str, kind: str, clear: bool = False) -> threading.Event:
        """The Stop of one page's running `kind` ("generate" or "search"); cleared when a run starts."""
        event = self._stops.setdefault((session, kind), threading.Event())
        if clear:
            event.clear()
        return event

    def shown_as(self) -> str:
        """How results are shown, for the labels: the factor where the model makes one size only."""
        if self.sizes.trained_only:
            h, w = self.sizes.native
            return shown_at((w, h))
        return "small images enlarged with nearest neighbour to about 512 px; the note gives the factor"

    def gallery_inputs(self, history: list, index: int | None):
        """The inputs that made gallery item `index`: prompt, seed, sizes, CFG, heads, w, window."""
        if index is None or not history or not 0 <= index < len(history):
            raise DemoInputError("Gallery: click an image in the gallery first")
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
        settings = SearchSettings.from_profile(
            profile, self.layout.arch, prompts, list(range(seeds)), defaults, steps=steps, k=k, rounds=rounds,
            size=size, model=self.name, extra=self.extras,
        )  # fmt: skip
        return search_with_true_cfg(settings, self.pipe)

    def check_search(self, objective, prompts, seeds, k, rounds, steps, sweep, profile, guard):
        """(objective, settings) from the checked search inputs, before any work."""
        choice("Objective", objective, SEARCH_OBJECTIVES)
        prompts = text("Prompts", prompts, limit=MAX_SEARCH_PROMPTS * MAX_PROMPT_CHARS)
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not 1 <= len(lines) <= MAX_SEARCH_PROMPTS:
            raise DemoInputError(
                f"Prompts: give 1 to {MAX_SEARCH_PROMPTS} prompts, one per line (got {len(lines)})"
            )
        seeds = whole("Seeds", seeds, 1, MAX_SEARCH_SEEDS)
        k = setting_of(SEARCH_K, "k", k)
        rounds = setting_of(SEARCH_ROUNDS, "Rounds", rounds)
        steps = setting_of(self.limits.steps(), "Steps", self.default_steps if steps is None else steps)
        if not isinstance(sweep, bool):
            raise DemoInputError(f"Head map: {sweep!r} must be true or false")
        profile = choice("Profile", profile, sorted(SEARCH_PROFILES))
        guard = choice("Guard", guard, [NO_GUARD, *SEARCH_OBJECTIVES])
        if guard == objective:
            raise DemoInputError(f"Guard: {guard!r} is the objective itself; choose another guard or 'none'")
        guard = None if guard == NO_GUARD else guard
        obj, _, _ = search_objective(objective, guard, search_profile(profile, self.layout.arch))
        settings = self.search_settings(profile, lines, seeds, k, rounds, steps)
        settings.objective = obj.name
        return obj, settings

    def search_updates(
        self, objective, prompts, seeds, k, rounds, steps, sweep, profile, guard, session: str,
        progress: Progress | None,
    ) -> Iterator[tuple]:  # fmt: skip
        """Run a head search in a worker thread; yields (head map PNG, report, preset file, heads with u, w,
        progress in words) while it runs (about twice a second when something changed) and once at the end.
        This page's Stop, or closing the generator (the page left), ends the search at its next step."""
        obj, settings = self.check_search(objective, prompts, seeds, k, rounds, steps, sweep, profile, guard)
        stop = self.stop_event(session, "search", clear=True)
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
                        progress(run.fraction(), outputs[-1])
                    shown = outputs
                    yield outputs
        finally:
            # the page left or the event was cancelled: the worker stops at its next step
            if worker.is_alive():
                stop.set()
        if isinstance(run.error, PIPELINE_REFUSALS):
            raise DemoInputError(str(run.error))
        if run.error is not None:
            raise run.error
        yield run.outputs()
