"""Objectives for head search: images (with prompts) -> one score per image, higher is better.

Built in: image statistics (`darkness`, `saturation`, `brightness`, `contrast`, `sharpness`), and for real models a
CLIP score or a preference model of the PickScore kind loaded with transformers (`clip:<path or hub id>`,
`pickscore:<path or hub id>`). `Constrained` ranks by one objective among candidates whose other objective passes a
threshold, absolute (the paper: PickScore >= 20 before ranking by CLIP score) or relative to the unguided images. Any callable
`(images, prompts) -> scores` works too (wrap it in `Objective`). Other packages register named objectives
with `register_objective` or an entry point in the `headhunter.objectives` group: the toy world's `toy-quality`,
`toy-fidelity`, `toy-dark`, `toy-outlined` arrive that way (the library never imports the toy world).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from guidance.config import SEARCH_SETTINGS

Images = Sequence[Image.Image]


class Objective:
    """A named per-image score; `candidate_score` reduces a candidate's images to one number (the mean)."""

    def __init__(self, name: str, score: Callable[[Images, Sequence[str]], Sequence[float]]):
        self.name = name
        self._score = score

    def __call__(self, images: Images, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._score(images, prompts), dtype=np.float64)

    def fit_baseline(self, scores: np.ndarray) -> None:
        """Called once with the per-image scores of the unguided images of a search's prompt-seed pairs."""

    def candidate_score(self, scores: np.ndarray) -> float:
        """One number for a candidate from its per-image scores."""
        return float(np.mean(scores))


class Constrained(Objective):
    """Rank by `target` among candidates whose mean `guard` passes a threshold, as the paper thresholds PickScore
    (>= 20) and the aesthetic score (>= 6) before ranking by CLIP score.

    The threshold is absolute (`min_score`: mean guard >= min_score), relative to the unguided images of the same
    pairs (`max_drop`: mean guard >= unguided mean - max_drop), or both. A candidate that fails scores -inf.
    `target` may itself be `Constrained` (several guards): per-image scores are columns [target..., guard].
    """

    def __init__(self, target: Objective, guard: Objective, max_drop: float | None = None,
                 min_score: float | None = None):  # fmt: skip
        if max_drop is None and min_score is None:
            raise ValueError("Constrained needs max_drop (relative) or min_score (absolute), or both")
        limits = [f"base-{max_drop:g}"] if max_drop is not None else []
        limits += [f"{min_score:g}"] if min_score is not None else []
        super().__init__(f"{target.name}|{guard.name}>={'&'.join(limits)}", self._both)
        self.target, self.guard, self.max_drop, self.min_score = target, guard, max_drop, min_score
        self.baseline: float | None = None

    def _both(self, images: Images, prompts: Sequence[str]) -> np.ndarray:
        return np.column_stack([self.target(images, prompts), self.guard(images, prompts)])

    @staticmethod
    def _split(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(target columns, guard column); a single target column is squeezed to per-image values."""
        scores = np.asarray(scores, dtype=np.float64)
        rest = scores[..., :-1]
        return (rest[..., 0] if rest.shape[-1] == 1 else rest), scores[..., -1]

    def fit_baseline(self, scores: np.ndarray) -> None:
        target, guard = self._split(scores)
        self.target.fit_baseline(target)
        self.baseline = float(np.mean(guard))

    def passes(self, guard_mean: float) -> bool:
        """Whether a candidate's mean guard score passes the absolute and the relative threshold."""
        if self.max_drop is not None:
            if self.baseline is None:
                raise RuntimeError("Constrained objective with max_drop used before fit_baseline")
            if guard_mean < self.baseline - self.max_drop:
                return False
        return self.min_score is None or guard_mean >= self.min_score

    def candidate_score(self, scores: np.ndarray) -> float:
        target, guard = self._split(scores)
        return self.target.candidate_score(target) if self.passes(float(np.mean(guard))) else -np.inf


# -------------------------------------------------------------------------------------------------------------
# Image statistics
# -------------------------------------------------------------------------------------------------------------


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def saturation(image: Image.Image) -> float:
    """Mean HSV saturation."""
    return float(np.asarray(image.convert("HSV"), dtype=np.float64)[..., 1].mean() / 255.0)


def brightness(image: Image.Image) -> float:
    """Mean luma (Rec. 601)."""
    return float((_rgb(image) @ np.array([0.299, 0.587, 0.114])).mean())


def contrast(image: Image.Image) -> float:
    """Standard deviation of luma."""
    return float((_rgb(image) @ np.array([0.299, 0.587, 0.114])).std())


def sharpness(image: Image.Image) -> float:
    """Mean absolute Laplacian of luma (higher: crisper edges)."""
    y = _rgb(image) @ np.array([0.299, 0.587, 0.114])
    lap = -4 * y[1:-1, 1:-1] + y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:]
    return float(np.abs(lap).mean())


def darkness(image: Image.Image) -> float:
    """1 - median luma of the border pixels: how dark the background is."""
    y = _rgb(image) @ np.array([0.299, 0.587, 0.114])
    border = np.concatenate([y[0], y[-1], y[:, 0], y[:, -1]])
    return float(1.0 - np.median(border))


def per_image(fn: Callable[[Image.Image], float]) -> Callable[[Images, Sequence[str]], list[float]]:
    """A prompt-independent per-image measure as an objective's score function."""
    return lambda images, prompts: [fn(image) for image in images]


# -------------------------------------------------------------------------------------------------------------
# CLIP score and PickScore-kind preference models (transformers; local path or hub id)
# -------------------------------------------------------------------------------------------------------------


class CLIPObjective(Objective):
    """Image-text agreement from a CLIP model: `clip` = 100 * max(cos, 0) (CLIPScore, Hessel et al. 2021);
    `pickscore` = logit_scale * cos (PickScore, Kirstain et al. 2023, a CLIP fine-tuned on preferences).

    `prefix` goes before every prompt: CLIPScore and the official HeadHunter search use "A photo depicts "."""

    def __init__(self, model: str, kind: str = "clip", device: str = "cpu", prefix: str = ""):
        if kind not in ("clip", "pickscore"):
            raise ValueError(f"kind={kind!r} must be 'clip' or 'pickscore'")
        import torch
        from transformers import AutoProcessor, CLIPModel

        self.torch = torch
        self.model = CLIPModel.from_pretrained(model).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(model)
        self.kind, self.device, self.prefix = kind, device, prefix
        super().__init__(f"{kind}:{model}" + (f"[{prefix.strip()}]" if prefix else ""), self._score_clip)

    def _score_clip(self, images: Images, prompts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            inputs = self.processor(text=[self.prefix + p for p in prompts], images=list(images), return_tensors="pt", padding=True,
                                    truncation=True).to(self.device)  # fmt: skip
            image = _embedding(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
            text = _embedding(
                self.model.get_text_features(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                )
            )
            cos = (image * text).sum(-1)
            if self.kind == "clip":
                return (100.0 * cos.clamp(min=0)).cpu().numpy()
            return (self.model.logit_scale.exp() * cos).cpu().numpy()


def _embedding(output):
    """Unit-norm projected embedding (transformers 5 returns an output object whose pooler_output it is)."""
    import torch

    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(features, dim=-1)


# -------------------------------------------------------------------------------------------------------------
# The registry
# -------------------------------------------------------------------------------------------------------------

ENTRY_POINT_GROUP = "headhunter.objectives"

BUILTIN: dict[str, Callable[[], Objective]] = {
    "darkness": lambda: Objective("darkness", per_image(darkness)),
    "saturation": lambda: Objective("saturation", per_image(saturation)),
    "brightness": lambda: Objective("brightness", per_image(brightness)),
    "contrast": lambda: Objective("contrast", per_image(contrast)),
    "sharpness": lambda: Objective("sharpness", per_image(sharpness)),
}


_REGISTERED: dict[str, Callable[[], Objective]] = {}
_LOADED_ENTRY_POINTS = False


def register_objective(name: str, factory: Callable[[], Objective]) -> None:
    """Make `get_objective(name)` build `factory()`; other packages (the toy world) register theirs this way,
    or through an entry point in the `headhunter.objectives` group that calls this."""
    if not name or ":" in name:
        raise ValueError(f"objective name {name!r} must be non-empty and contain no ':'")
    _REGISTERED[name] = factory


def _load_entry_points() -> None:
    """Call every installed `headhunter.objectives` entry point once (they register their objectives)."""
    global _LOADED_ENTRY_POINTS
    if _LOADED_ENTRY_POINTS:
        return
    _LOADED_ENTRY_POINTS = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()()


def objective_names() -> list[str]:
    """Every objective name `get_objective` knows (built in and registered)."""
    _load_entry_points()
    return sorted({*BUILTIN, *_REGISTERED})


def get_objective(spec: str | Objective, guard: str | Objective | None = None, max_drop: float | None = None,
                  min_score: float | None = None, prefix: str = "") -> Objective:  # fmt: skip
    """An objective from its name (`toy-quality`, `clip:<model>`, `pickscore:<model>`, ...), optionally
    constrained by `guard`: its mean must stay >= `min_score` (absolute) and/or drop at most `max_drop` below the
    unguided images (relative; `SEARCH_SETTINGS["max_drop"]`'s default, 0.05, when neither is given). `prefix` goes before the prompts of a `clip:` /
    `pickscore:` objective (the paper's CLIP score: "A photo depicts ")."""
    if isinstance(spec, Objective):
        objective = spec
    elif spec.startswith(("clip:", "pickscore:")):
        kind, _, model = spec.partition(":")
        objective = CLIPObjective(model, kind, prefix=prefix)
    elif spec in BUILTIN:
        objective = BUILTIN[spec]()
    else:
        if spec not in _REGISTERED:
            _load_entry_points()
        if spec not in _REGISTERED:
            raise ValueError(
                f"objective={spec!r} is unknown; known: {objective_names()}, or 'clip:<model>', 'pickscore:<model>'"
            )
        objective = _REGISTERED[spec]()
    if guard is None:
        return objective
    if max_drop is None and min_score is None:
        max_drop = SEARCH_SETTINGS["max_drop"].default
    return Constrained(objective, get_objective(guard), max_drop, min_score)
