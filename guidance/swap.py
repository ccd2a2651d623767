"""The pipeline's components as the techniques use them: which one is the denoiser (`denoiser_of`), its attention
modules by name (`attention_modules`), and one call at a time on a shared scheduler or tokenizer
(`one_call_per_scheduler`, `component_lock`). Installing processors and hooks for a call is `guidance.scope`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from guidance.config import GuidanceError

__all__ = ["GuidanceError", "attention_modules", "component_lock", "denoiser_of", "one_call_per_scheduler"]

_LOCK = threading.RLock()


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's denoiser: `pipe.unet` for UNet pipelines, `pipe.transformer` for the others."""
    denoiser = getattr(pipe, "unet", None)
    if denoiser is None:
        denoiser = getattr(pipe, "transformer", None)
    if denoiser is None:
        raise GuidanceError(f"{type(pipe).__name__} has neither a `unet` nor a `transformer` component")
    return denoiser


def attention_modules(model: torch.nn.Module, suffix: str) -> list[str]:
    """Names of the attention modules whose name ends with `suffix` (e.g. "attn1"), in `attn_processors` order."""
    tail = f"{suffix}.processor"
    return [k.removesuffix(".processor") for k in model.attn_processors if k.endswith(tail)]


_COMPONENT_LOCKS: dict[int, threading.RLock] = {}


def component_lock(component: object) -> threading.RLock:
    """One lock per shared component (e.g. a tokenizer): fast tokenizers keep their padding and truncation settings
    in shared state, so pipelines sharing one (`from_pipe`) must not encode at the same moment."""
    with _LOCK:
        return _COMPONENT_LOCKS.setdefault(id(component), threading.RLock())


@contextmanager
def one_call_per_scheduler(scheduler: object, owner: str) -> Iterator[None]:
    """Hold a pipeline's scheduler for one call. diffusers' schedulers keep per-call state (timesteps, step index),
    so a call from another thread on the same scheduler, guided or plain, would corrupt both: it is refused before
    any work. The holding thread may enter again (a pipeline's `__call__` calling its parent's)."""
    lock = component_lock(scheduler)
    if not lock.acquire(blocking=False):
        raise GuidanceError(
            f"{owner}: its scheduler is in use by a call running in another thread; diffusers' schedulers keep "
            "per-call state, so give each thread its own pipeline: "
            "HeadHunterPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))"
        )
    try:
        yield
    finally:
        lock.release()
