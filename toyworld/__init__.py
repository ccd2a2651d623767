"""Toy world: procedural scenes, a model-free evaluator, and training of small diffusers pipelines."""

from toyworld.evaluator import evaluate
from toyworld.scenes import (
    HELD_OUT_PAIRS,
    ObjectSpec,
    Scene,
    canonical_caption,
    caption,
    parse_caption,
    render,
    sample_scene,
)

__all__ = [
    "HELD_OUT_PAIRS",
    "ObjectSpec",
    "Scene",
    "canonical_caption",
    "caption",
    "evaluate",
    "parse_caption",
    "render",
    "sample_scene",
]
