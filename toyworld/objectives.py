"""The toy world's search objectives, registered with the library's objective registry.

`toy-quality`, `toy-fidelity` (the evaluator's prompt-agreement score), `toy-dark`, `toy-outlined`. The package
entry point (`headhunter.objectives` in pyproject.toml) calls `register`, so `get_objective("toy-quality")` works
wherever the project is installed, without the library importing the toy world.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from guidance.objectives import Images, Objective, darkness, per_image, register_objective
from toyworld.evaluator import detect, evaluate


def _toy(key: str) -> Callable[[Images, Sequence[str]], list[float]]:
    """One evaluator measure per image, against its prompt (a missing measure counts as 0)."""

    def score(images: Images, prompts: Sequence[str]) -> list[float]:
        return [
            float(evaluate(image, prompt)[key] or 0.0) for image, prompt in zip(images, prompts, strict=True)
        ]

    return score


def _outlined(images: Images, prompts: Sequence[str]) -> list[float]:
    """The share of detected objects drawn as outlines."""
    values = []
    for image in images:
        detections = detect(image)[0]
        values.append(float(np.mean([d.outlined for d in detections])) if detections else 0.0)
    return values


def register() -> None:
    """Register the toy world's objectives (called by the `headhunter.objectives` entry point)."""
    register_objective("toy-quality", lambda: Objective("toy-quality", _toy("quality")))
    register_objective("toy-fidelity", lambda: Objective("toy-fidelity", _toy("score")))
    register_objective("toy-dark", lambda: Objective("toy-dark", per_image(darkness)))
    register_objective("toy-outlined", lambda: Objective("toy-outlined", _outlined))
