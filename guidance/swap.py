"""Install attention processors for one call and put the previous ones back; the step window; the denoiser.

Every technique (SoftPAG, structured cross-attention, UpFusion's scene-token attention) swaps processors the
same way: only on the modules it names, only over processors it reproduces (anything else, e.g. xformers or an
IP-Adapter, is refused with its class name instead of being silently dropped), and always restored in `finally`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from guidance.config import GuidanceError

__all__ = [
    "GuidanceError",
    "StepWindow",
    "attention_modules",
    "denoiser_of",
    "shared_hooks",
    "swapped_processors",
]

# Calls running at once on shared modules (pipelines made with `from_pipe`, used from several threads) share one
# installation per module; the last call out restores. Processors that may be shared (a `share_key`) and shared
# hooks read their per-call state from a context variable, never from the object.
_LOCK = threading.RLock()


@dataclass
class _Installed:
    processor: object
    original: object
    count: int = 1


_PROCESSORS: dict[int, _Installed] = {}
_HOOKS: dict[tuple[int, str], list] = {}


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


@contextmanager
def swapped_processors(
    model: torch.nn.Module,
    processors: Mapping[str, object],
    replaceable: Iterable[str],
    parameter: str,
    error: type[Exception] = GuidanceError,
) -> Iterator[None]:
    """Put `processors` ({module name: processor}) on `model` for the duration; restore the previous ones always.

    replaceable: class names of the processors this feature reproduces (and its own). A module holding any other
        processor is refused before anything changes, the message naming `parameter`, the module and its class.
    A processor with the same class and `share_key` already installed on a module by another running call is kept and shared.
    After the body, a processor that something else replaced during the call is reported (the call's result did
    not get the feature), after the originals are back.
    """
    allowed = tuple(replaceable)
    modules = {name: model.get_submodule(name) for name in processors}
    held: dict[str, _Installed] = {}
    with _LOCK:
        plan = {}
        for name, processor in processors.items():
            module = modules[name]
            entry = _PROCESSORS.get(id(module))
            if (
                entry is not None
                and module.processor is entry.processor
                and _shares(entry.processor, processor)
            ):
                plan[name] = entry
                continue
            kind = type(module.processor).__name__
            if kind not in allowed:
                hint = (
                    " (call pipe.disable_xformers_memory_efficient_attention())" if "XFormers" in kind else ""
                )
                raise error(
                    f"{parameter}: {name} uses {kind}, which would be silently dropped; only "
                    f"{', '.join(allowed)} can be replaced{hint}. IP-Adapter, xformers and fused projections "
                    "are not supported on these layers."
                )
            plan[name] = None
        for name, entry in plan.items():
            if entry is None:
                entry = _Installed(processors[name], modules[name].processor, 0)
                _keep_backend(entry.original, processors[name])
                modules[name].set_processor(processors[name])
                _PROCESSORS[id(modules[name])] = entry
            entry.count += 1
            held[name] = entry
    try:
        yield
        replaced = [n for n, e in held.items() if modules[n].processor is not e.processor]
        if replaced:
            raise error(
                f"{parameter}: the attention processors of {replaced} were replaced during the call (e.g. by "
                "enable_xformers_memory_efficient_attention or an IP-Adapter loader); the feature was not applied"
            )
    finally:
        with _LOCK:
            for name, entry in held.items():
                entry.count -= 1
                if entry.count == 0:
                    modules[name].set_processor(entry.original)
                    _PROCESSORS.pop(id(modules[name]), None)


def _keep_backend(original: object, processor: object) -> None:
    """Carry the user's attention backend and parallel config (`set_attention_backend`) to our processor."""
    for attribute in ("_attention_backend", "_parallel_config"):
        if hasattr(processor, attribute) and hasattr(original, attribute):
            setattr(processor, attribute, getattr(original, attribute))


def _shares(installed: object, wanted: object) -> bool:
    """Two processors are interchangeable when they are of one class with the same non-None `share_key`."""
    key = getattr(installed, "share_key", None)
    return type(installed) is type(wanted) and key is not None and key == getattr(wanted, "share_key", None)


@contextmanager
def shared_hooks(module: torch.nn.Module, key: str, register: Callable[[], list]) -> Iterator[None]:
    """Hooks registered once per (module, key) for all calls running at once; removed when the last one ends.

    `register()` registers them and returns their handles; the hooks must find their call's state themselves
    (a context variable), since one registration serves every running call."""
    slot = (id(module), key)
    with _LOCK:
        entry = _HOOKS.get(slot)
        if entry is None:
            entry = _HOOKS[slot] = [0, register()]
        entry[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                for handle in entry[1]:
                    handle.remove()
                del _HOOKS[slot]


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


class StepWindow:
    """Counts one pipeline call's main denoiser evaluations and tells whether each lies in [start, stop).

    The fraction is evaluations so far over those the scheduler plans (`len(scheduler.timesteps)`; Heun-type
    schedulers plan two per step), so a window means the same part of the schedule for every scheduler."""

    def __init__(self, scheduler, start: float = 0.0, stop: float = 1.0):
        self.scheduler, self.start, self.stop = scheduler, start, stop
        self.calls = 0

    def advance(self) -> bool:
        """Count one main evaluation; True when it lies inside the window."""
        fraction = self.calls / max(len(self.scheduler.timesteps), 1)
        self.calls += 1
        return self.start <= fraction < self.stop
