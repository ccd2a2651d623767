"""Gradio demo: SoftPAG generation with head selections, guided beside unguided from the same seed.

python app.py                      # the embedded toy SD3 model, on http://127.0.0.1:7860, no network
python app.py --model stabilityai/stable-diffusion-3-medium-diffusers --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from guidance import SOFTPAG_SETTINGS, HeadSelection, HeadSelectionError, SoftPAGError  # noqa: E402
from guidance.layouts import layout_of  # noqa: E402
from guidance.swap import denoiser_of  # noqa: E402
from pipelines import HeadHunterPipeline  # noqa: E402
from pipelines.settings import (  # noqa: E402
    DEFAULT_MODEL,
    PRESETS,
    list_presets,
    model_call_extras,
    png_parameters,
    recommended_settings,
)

PAG = {name.removeprefix("pag_"): setting for name, setting in SOFTPAG_SETTINGS.items()}

NO_PRESET = "(none: type heads below)"
MAX_PRESET_BYTES = 256 * 1024


SEARCH_OBJECTIVES = ("toy-quality", "toy-fidelity", "toy-dark", "toy-outlined", "saturation", "brightness",
                     "contrast", "sharpness")  # fmt: skip
MAX_SEARCH_PROMPTS, MAX_SEARCH_SEEDS, MAX_K, MAX_ROUNDS = 8, 4, 8, 3


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; requests beyond are refused with a message naming the input."""

    max_steps: int = 100
    max_size: int = 1024
    queue_size: int = 16
    concurrency: int = 1


class Demo:
    """A loaded pipeline plus what the UI needs to know about it."""

    def __init__(self, pipe, model: str, limits: Limits = Limits()):
        self.pipe, self.model, self.limits = pipe, model, limits
        self.denoiser = denoiser_of(pipe)
        self.heads_per_layer = layout_of(self.denoiser).heads_per_layer
        settings = recommended_settings(model)
        self.extras = model_call_extras(model)
        self.default_steps = min(settings.get("num_inference_steps", 28), limits.max_steps)
        self.default_cfg = settings.get("guidance_scale", 5.0)
        self.default_size = settings.get("height") or pipe.default_sample_size * pipe.vae_scale_factor
        self.size_multiple = (
            pipe.vae_scale_factor
            * getattr(self.denoiser.config, "patch_size", 1)
            * (2 if type(pipe).__name__ == "HeadHunterFluxPipeline" else 1)
        )
        self.presets = self._compatible_presets()

    def _compatible_presets(self) -> dict[str, str]:
        """Shipped presets whose heads exist in the loaded model: name -> path."""
        found = {}
        for name, data in list_presets():
            try:
                HeadSelection.from_json(data).validate(self.heads_per_layer)
            except HeadSelectionError:
                continue
            found[name] = str(PRESETS / f"{name}.json")
        return found

    # -- validation ---------------------------------------------------------------------------------------

    def check(self, steps, size, seed) -> None:
        """Refuse out-of-range numbers with a message that names the input."""
        lim = self.limits
        if steps is None or int(steps) != steps or not 1 <= steps <= lim.max_steps:
            raise gr.Error(f"Steps: {steps} is not allowed; use a whole number from 1 to {lim.max_steps}")
        if size is None or int(size) != size or not 0 < size <= lim.max_size or size % self.size_multiple:
            raise gr.Error(
                f"Size: {size} is not allowed; use a multiple of {self.size_multiple} up to {lim.max_size}"
            )
        if seed is None or int(seed) != seed or seed < -1 or seed >= 2**63:
            raise gr.Error(f"Seed: {seed} is not allowed; use -1 (random) or a whole number from 0 to 2^63-1")

    def selection(self, preset: str, heads_text: str, preset_file: str | None) -> HeadSelection | None:
        """The heads from an uploaded preset, a shipped preset, or typed text (in that order)."""
        try:
            if preset_file:
                path = Path(preset_file)
                if path.suffix.lower() != ".json" or path.stat().st_size > MAX_PRESET_BYTES:
                    raise gr.Error("Preset file: upload a .json preset of at most 256 KiB")
                selection = HeadSelection.from_json(json.loads(path.read_text()), "Preset file")
            elif preset and preset != NO_PRESET:
                if preset not in self.presets:
                    raise gr.Error(f"Preset: {preset!r} is not a preset for this model")
                selection = HeadSelection.load(self.presets[preset], "Preset")
            elif heads_text and heads_text.strip():
                selection = HeadSelection.parse(heads_text, "Heads")
            else:
                return None
            selection.validate(self.heads_per_layer, "Heads")
            return selection
        except (HeadSelectionError, json.JSONDecodeError) as error:
            raise gr.Error(str(error)) from None

    # -- generation ----------------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: float = -1,
        steps: float | None = None,
        size: float | None = None,
        guidance_scale: float | None = None,
        pag_scale: float = PAG["scale"].default,
        pag_strength: float = PAG["strength"].default,
        pag_identity: str = PAG["identity"].default,
        pag_start: float = PAG["start"].default,
        pag_stop: float = PAG["stop"].default,
        preset: str = NO_PRESET,
        heads: str = "",
        preset_file: str | None = None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """Guided and unguided images from one seed, each a PNG carrying its parameters."""
        if not prompt or not prompt.strip():
            raise gr.Error("Prompt: write a prompt")
        steps = self.default_steps if steps is None else steps
        size = self.default_size if size is None else size
        cfg = self.default_cfg if guidance_scale is None else guidance_scale
        self.check(steps, size, seed)
        selection = self.selection(preset, heads, preset_file)
        seed = random.randrange(2**31) if seed == -1 else int(seed)
        call = dict(self.extras, num_inference_steps=int(steps), height=int(size), width=int(size),
                    guidance_scale=float(cfg))  # fmt: skip
        if negative_prompt:
            call["negative_prompt"] = negative_prompt
        pag = dict(pag_heads=selection, pag_scale=pag_scale, pag_strength=pag_strength, pag_identity=pag_identity,
                   pag_start=pag_start, pag_stop=pag_stop)  # fmt: skip
        images = []
        for extra in ((pag if selection else {}), {}):
            try:
                image = self.pipe(
                    prompt, generator=torch.Generator().manual_seed(seed), **call, **extra
                ).images[0]
            except (SoftPAGError, HeadSelectionError, ValueError) as error:
                raise gr.Error(str(error)) from None
            record = {"model": self.model, "seed": seed, **call, **extra}
            if selection is not None and extra:
                record["pag_heads"] = str(selection)
            image.info["parameters"] = png_parameters(prompt, negative_prompt, record)
            image.info["headhunter"] = json.dumps(record, sort_keys=True, default=str)
            images.append(image)
        note = f"seed {seed} · " + (
            f"heads {selection}" if selection else "no heads selected: both images unguided"
        )
        return images[0], images[1], note

    def search(
        self,
        objective: str,
        prompts: str,
        seeds: float = 2,
        k: float = 4,
        rounds: float = 1,
        steps: float | None = None,
        sweep: bool = True,
        progress=gr.Progress(track_tqdm=True),
    ):
        """Run a head search; yields (head map PNG, report, preset file, heads text) as results arrive."""
        import tempfile

        from guidance.objectives import get_objective
        from guidance.search import HeadSearch, SearchSettings, heatmap, label, preset

        if objective not in SEARCH_OBJECTIVES:
            raise gr.Error(f"Objective: {objective!r} is not one of {', '.join(SEARCH_OBJECTIVES)}")
        lines = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
        if not 1 <= len(lines) <= MAX_SEARCH_PROMPTS:
            raise gr.Error(
                f"Prompts: give 1 to {MAX_SEARCH_PROMPTS} prompts, one per line (got {len(lines)})"
            )
        for name, value, top in (
            ("Seeds", seeds, MAX_SEARCH_SEEDS),
            ("k", k, MAX_K),
            ("Rounds", rounds, MAX_ROUNDS),
        ):
            if value is None or int(value) != value or not 1 <= value <= top:
                raise gr.Error(f"{name}: {value} is not allowed; use a whole number from 1 to {top}")
        steps = self.default_steps if steps is None else steps
        self.check(steps, self.default_size, 0)
        obj = get_objective(objective)
        settings = SearchSettings(prompts=lines, seeds=list(range(int(seeds))), steps=int(steps),
                                  size=int(self.default_size), guidance_scale=float(self.default_cfg),
                                  model=self.model, objective=obj.name, extra=self.extras)  # fmt: skip
        out = Path(tempfile.mkdtemp(prefix="headhunter-search-"))
        search = HeadSearch(self.pipe, obj, settings)
        report = [f"unguided {obj.name}: {search.baseline:.4f}"]
        image = None
        if sweep:
            head_map = search.head_map()
            image = str(heatmap(head_map, search.baseline, out / "headmap.png"))
            best = sorted(head_map, key=lambda h: -head_map[h])[:5]
            report.append("best single heads: " + ", ".join(f"{label((h,))} {head_map[h]:.4f}" for h in best))
            yield image, "\n\n".join(report), None, ""
        history = search.greedy(int(k), int(rounds))
        report += [f"round {r['round']}: +{', '.join(r['added'])} -> {r['score']:.4f}" for r in history]
        heads, selected = history[-1]["heads"], history[-1]["selected"]
        path = preset(
            selected, settings, 0.5, {"unguided": search.baseline, "rounds": history}, objective
        ).save(out / f"preset-{objective}.json")
        yield image, "\n\n".join(report), str(path), heads


def build_app(demo: Demo) -> gr.Blocks:
    """The Blocks UI around a `Demo`."""
    with gr.Blocks(title="HeadHunter") as app:
        gr.Markdown(f"# HeadHunter · SoftPAG\nModel: `{demo.model}`")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(
                        label="Prompt", value="a red circle on the left and a blue square on the right"
                    )
                    negative = gr.Textbox(label="Negative prompt", value="")
                    with gr.Row():
                        seed = gr.Number(label="Seed (-1 = random)", value=0, precision=0)
                        # Numbers, not sliders: out-of-range values reach our checks, whose messages name the input.
                        steps = gr.Number(label="Steps", value=demo.default_steps, precision=0)
                        size = gr.Number(label=f"Size (multiple of {demo.size_multiple})", value=demo.default_size,
                                         precision=0)  # fmt: skip
                    with gr.Row():
                        cfg = gr.Slider(1, 15, value=demo.default_cfg, step=0.5, label="CFG scale")
                        pag_scale = gr.Slider(
                            0,
                            10,
                            value=PAG["scale"].default,
                            step=0.25,
                            label="PAG scale w",
                            info=PAG["scale"].help,
                        )
                        pag_strength = gr.Slider(
                            0,
                            1,
                            value=PAG["strength"].default,
                            step=0.05,
                            label="Strength u",
                            info=PAG["strength"].help,
                        )
                    with gr.Row():
                        identity = gr.Radio(
                            list(PAG["identity"].choices),
                            value=PAG["identity"].default,
                            label="Identity",
                            info=PAG["identity"].help,
                        )
                        start = gr.Slider(
                            0,
                            1,
                            value=PAG["start"].default,
                            step=0.05,
                            label="Start (fraction)",
                            info=PAG["start"].help,
                        )
                        stop = gr.Slider(
                            0,
                            1,
                            value=PAG["stop"].default,
                            step=0.05,
                            label="Stop (fraction)",
                            info=PAG["stop"].help,
                        )
                    preset = gr.Dropdown([NO_PRESET, *demo.presets], value=NO_PRESET, label="Preset")
                    heads = gr.Textbox(label="Heads", value="L2H1, L3H0", placeholder="L1H10, L5H3=0.5")
                    preset_file = gr.File(
                        label="Or upload a preset JSON", file_types=[".json"], type="filepath"
                    )
                    run = gr.Button("Generate", variant="primary")
                with gr.Column():
                    with gr.Row():
                        guided = gr.Image(label="Guided (SoftPAG)", type="pil", format="png", height=320)
                        plain = gr.Image(label="Unguided, same seed", type="pil", format="png", height=320)
                    info = gr.Markdown()
            run.click(
                demo.generate,
                [
                    prompt,
                    negative,
                    seed,
                    steps,
                    size,
                    cfg,
                    pag_scale,
                    pag_strength,
                    identity,
                    start,
                    stop,
                    preset,
                    heads,
                    preset_file,
                ],  # fmt: skip
                [guided, plain, info],
                api_name="generate",
                concurrency_limit=demo.limits.concurrency,
            )
        with gr.Tab("Head search"):
            with gr.Row():
                with gr.Column():
                    objective = gr.Dropdown(list(SEARCH_OBJECTIVES), value="toy-quality", label="Objective")
                    search_prompts = gr.Textbox(label=f"Prompts (one per line, at most {MAX_SEARCH_PROMPTS})",
                                                lines=4, value="a red circle\na blue square on the left and a yellow triangle on the right")  # fmt: skip
                    with gr.Row():
                        n_seeds = gr.Number(
                            label=f"Seeds per prompt (1-{MAX_SEARCH_SEEDS})", value=2, precision=0
                        )
                        k = gr.Number(label=f"Heads per round k (1-{MAX_K})", value=4, precision=0)
                        rounds = gr.Number(label=f"Rounds (1-{MAX_ROUNDS})", value=1, precision=0)
                        search_steps = gr.Number(label="Steps", value=demo.default_steps, precision=0)
                    sweep = gr.Checkbox(label="Head map (score every head alone first)", value=True)
                    go = gr.Button("Search", variant="primary")
                with gr.Column():
                    head_map = gr.Image(label="Head map: score - unguided (layers x heads)", type="filepath")
                    report = gr.Markdown()
                    found = gr.File(label="Found preset")
                    found_heads = gr.Textbox(label="Found heads", interactive=False)
                    use = gr.Button("Use these heads in the Generate tab")
            go.click(
                demo.search,
                [objective, search_prompts, n_seeds, k, rounds, search_steps, sweep],
                [head_map, report, found, found_heads],
                api_name="search",
                concurrency_limit=demo.limits.concurrency,
            )
            use.click(lambda text: (text, NO_PRESET), [found_heads], [heads, preset], api_name=False)
    return app


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model, serve the app."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(DEFAULT_MODEL), help="hub id or folder (default: the toy SD3 model)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-steps", type=int, default=Limits.max_steps)
    parser.add_argument("--max-size", type=int, default=Limits.max_size)
    parser.add_argument("--queue-size", type=int, default=Limits.queue_size)
    args = parser.parse_args(argv)
    pipe = HeadHunterPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device)
    limits = Limits(args.max_steps, args.max_size, args.queue_size)
    app = build_app(Demo(pipe, args.model, limits))
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    app.launch(server_name=args.host, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
