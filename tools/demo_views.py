"""The demo's Novel views tab without Gradio (app.py lays it out): UpFusion where its weights exist (why not, in
words, where they do not), loaded on first use; the toy objects' views copied in as the images input; the views
at the chosen cameras, or an orbit with its turntable GIFs.

Refusals are `DemoInputError`s naming the input.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import torch

from guidance.config import GENERATION_SETTINGS
from tools.demo import (
    VIEW_SETTINGS,
    DemoInputError,
    choice,
    display_name,
    input_gallery,
    parse_cameras,
    read_views,
    setting_of,
    shown_gallery,
    toy_objects,
    turntable_gif,
)
from tools.demo_model import Limits
from tools.settings import DEFAULT_MODEL

UPFUSION = Path(DEFAULT_MODEL).parent / "toy-upfusion"
YOUR_IMAGES = "(your own images)"  # the toy-object menu's entry for the user's own uploads


class ViewsModel:
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

    def toy_views(self, label: str) -> tuple[list[str], list] | None:
        """Picking a toy object: (copies of its views for the images input, those shown); None for the user's
        own images (the input stays as it is)."""
        if label == YOUR_IMAGES:
            return None
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

    def views(self, files, mode, cameras, frames, elevation, steps, cfg, seed):
        """Novel views of the object: a gallery (enlarged, captions with the native size), and for an orbit the
        turntable shown playing (an enlarged GIF) and the native GIF to download."""
        reason = self.unavailable()
        if reason:
            raise DemoInputError(reason)
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
