"""The demo's Structured prompts tab without Gradio (app.py lays it out): a model of a family that has
structured cross-attention (by default the toy SD1.5, where the official conjunction mode measured a gain), read
without loading it to say why the tab cannot run, loaded on first use, and one comparison: plain and structured
images of one seed, the noun phrases, PNG files and the measured effect.

Refusals are `DemoInputError`s naming the input; progress goes to a plain `progress(value, desc)`.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import torch

from guidance.heads import printable
from pipelines import HeadHunterPipeline
from tools.demo import (
    STRUCTURED_MODEL,
    DemoInputError,
    display_name,
    enlarge,
    enlargement,
    input_warnings,
    model_sizes,
    phrases_markdown,
    prompt_help,
    setting_of,
    shown_at,
    structured_choices,
    structured_effect,
    structured_mode,
    text,
)
from tools.demo_model import Limits, Progress, checked_seed
from tools.settings import (
    check_structured,
    image_record,
    model_call_extras,
    recommended_settings,
    record_parameters,
    save_png,
    structured_support,
)


class StructuredModel:
    """Structured cross-attention beside plain generation of the same seed, on a model of a family that has it
    (by default the toy SD1.5, where the official conjunction mode measured a gain); loaded on first use."""

    def __init__(self, model: str | Path = STRUCTURED_MODEL, device: str = "cpu", dtype: str = "float32",
                 limits: Limits = Limits()):  # noqa: B008 (frozen)  # fmt: skip
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

    def effect_note(self) -> str:
        """The measured effect shown before the first comparison."""
        return structured_effect(self.model) if self.support else ""

    def _load(self):
        with self._lock:
            if self.pipe is None:
                pipe = HeadHunterPipeline.from_pretrained(self.model, dtype=getattr(torch, self.dtype))
                pipe.set_progress_bar_config(disable=True)
                self.sizes = model_sizes(pipe, self.settings, self.limits.max_size)
                self.pipe = pipe.to(self.device)
        return self.pipe

    def comparison(self, prompt, mode, seed, steps, progress: Progress | None) -> tuple[tuple, list[str]]:
        """((noun phrases, structured image or None, plain image, note, PNG files), warnings): plain and
        structured images of one seed, shown enlarged, with the measured effect (and the warnings) in the note."""
        from pipelines.structured import structured_phrases

        if self.reason:
            raise DemoInputError(self.reason)
        prompt = text("Prompt", prompt, required=True)
        mode = structured_mode(mode, self.choices)
        try:
            check_structured(mode, self.support, None, "Mode")
        except ValueError as error:
            raise DemoInputError(str(error)) from None
        seed = checked_seed(seed)
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
                    progress((done + i + 1, passes * steps), "structured" if structured else "plain")
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
        warnings = input_warnings(prompt, self.words, [])
        for warning in warnings:
            note += f"\n\n⚠ {warning}"
        structured_image = enlarge(made, factor) if made is not None else None
        outputs = (phrases_markdown(phrases, mode), structured_image, enlarge(plain, factor), note, files)
        return outputs, warnings
