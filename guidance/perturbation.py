"""One SoftPAG call: validate the settings, install processors and batch hooks, combine the guided prediction.

Flow of a denoiser call while `SoftPAG.applied(...)` is active:
1. A forward pre-hook on the denoiser sees the pipeline's batch (`[uncond, cond]` or `[cond]`). On a main call
   (not SD3's skip-layer call nor FLUX's separate true-CFG uncond call) inside the start/stop window it appends one copy of the cond rows per head group and sets each
   perturbed module's strengths (rows, heads) in the call's `PerturbationState` (0 on unperturbed rows).
2. Shared prefix (transformers): the blocks before the first perturbed layer compute the same thing for cond
   and perturbed rows, so only the time embedding inputs grow at the start; blocks before the split see the first
   rows of it, and a pre-hook on the first perturbed block copies the cond rows of the image and text streams.
3. The processors apply `softpag_attention` on their module's rows.
4. A forward hook folds the perturbed rows back: cond += sum_g w_g (cond - perturbed_g) / d, where d is the CFG
   scale the pipeline applies next (1 without CFG), so that the pipeline's own CFG step yields
   uncond + w_cfg (cond - uncond) + sum_g w_g (cond - perturbed_g).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from guidance.heads import HeadSelection
from guidance.layouts import REPLACEABLE, ModelLayout, layout_of
from guidance.processors import PerturbationState
from guidance.softpag import IDENTITIES

# Inputs that carry one row per batch item, by architecture: those that feed the time embedding, and the streams.
TEMB_INPUTS = {
    "sd3": ("timestep", "pooled_projections"),
    "flux": ("timestep", "pooled_projections", "guidance"),
}
STREAM_INPUTS = ("hidden_states", "encoder_hidden_states")
UNET_INPUTS = (
    "sample",
    "timestep",
    "encoder_hidden_states",
    "timestep_cond",
    "added_cond_kwargs",
    "class_labels",
)


class SoftPAGError(ValueError):
    """Bad SoftPAG settings, or processors that another feature replaced."""


def _check_number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SoftPAGError(f"{name}={value!r} must be a finite number in [{low:g}, {high:g}]")
    if not low <= value <= high:
        raise SoftPAGError(f"{name}={value!r} is out of range; allowed: [{low:g}, {high:g}]")
    return float(value)


@dataclass
class CallRows:
    """Where the cond rows sit in the pipeline's batch and what CFG scale the pipeline applies afterwards."""

    cond: slice
    cfg_divisor: float


class SoftPAG:
    """Validated SoftPAG settings for one pipeline call on one denoiser."""

    def __init__(
        self,
        denoiser: torch.nn.Module,
        heads=None,
        scale: float | Sequence[float] = 3.0,
        strength: float = 1.0,
        identity: str = "joint",
        start: float = 0.0,
        stop: float = 1.0,
        shared_prefix: bool = True,
        heads_per_image: Sequence | None = None,
    ):
        self.denoiser = denoiser
        self.layout: ModelLayout = layout_of(denoiser)
        if (heads is None) == (heads_per_image is None):
            raise SoftPAGError("give exactly one of pag_heads and pag_heads_per_image")
        if identity not in IDENTITIES:
            raise SoftPAGError(f"pag_identity={identity!r} is not supported; allowed: {IDENTITIES}")
        self.identity = identity
        self.default_u = _check_number("pag_strength", strength, 0.0, 1.0)
        self.start = _check_number("pag_start", start, 0.0, 1.0)
        self.stop = _check_number("pag_stop", stop, 0.0, 1.0)
        if self.start >= self.stop:
            raise SoftPAGError(f"pag_start={start!r} must be below pag_stop={stop!r}")
        if heads_per_image is not None:
            self._per_image(heads_per_image, scale)
        else:
            self._groups(HeadSelection.parse(heads, "pag_heads"), scale)
        self.modules = sorted({name for table in self.group_strengths for name in table})
        self.split_block = min(self.layers) if shared_prefix and self.layout.blocks else None

    def _strengths(self, selection: HeadSelection, parameter: str) -> dict[str, torch.Tensor]:
        """{module name: strengths (heads,)} of all entries of a selection, checked against the model."""
        selection.validate(self.layout.heads_per_layer, parameter)
        table: dict[str, torch.Tensor] = {}
        for head in selection.entries:
            site = self.layout.sites[head.layer, head.attention]
            u = self.default_u if head.strength is None else head.strength
            table.setdefault(site.name, torch.zeros(site.heads))[head.head] = u
        return table

    def _groups(self, selection: HeadSelection, scale) -> None:
        """`pag_heads`: one perturbed copy of the cond rows per head group, each with its own scale."""
        groups = selection.groups
        if isinstance(scale, Sequence) and not isinstance(scale, str):
            if len(scale) != len(groups):
                raise SoftPAGError(f"pag_scale has {len(scale)} values for {len(groups)} head groups")
            self.scales = [_check_number(f"pag_scale[{i}]", s, -100, 100) for i, s in enumerate(scale)]
        else:
            base = _check_number("pag_scale", scale, -100, 100)
            self.scales = [base if g.scale is None else g.scale for g in groups]
        self.group_strengths = [self._strengths(HeadSelection((g,)), "pag_heads") for g in groups]
        self.layers = [h.layer for h in selection.entries]
        self.images: int | None = None

    def _per_image(self, selections: Sequence, scale) -> None:
        """`pag_heads_per_image`: one perturbed row per image, each with its own heads (head search batches)."""
        if isinstance(selections, str) or not len(selections):
            raise SoftPAGError(
                "pag_heads_per_image must be a non-empty list with one head selection per image"
            )
        self.scales = [_check_number("pag_scale", scale, -100, 100)]
        # None: that image gets no heads (u = 0), i.e. it comes out as without SoftPAG.
        parsed = [
            None if s is None else HeadSelection.parse(s, f"pag_heads_per_image[{i}]")
            for i, s in enumerate(selections)
        ]
        tables = [
            {} if s is None else self._strengths(s, f"pag_heads_per_image[{i}]") for i, s in enumerate(parsed)
        ]
        if not any(tables):
            raise SoftPAGError("pag_heads_per_image: every entry is None; pass at least one head selection")
        merged: dict[str, torch.Tensor] = {}
        for i, table in enumerate(tables):
            for name, u in table.items():
                merged.setdefault(name, torch.zeros(len(tables), u.numel()))[i] = u
        self.group_strengths = [merged]
        self.layers = [h.layer for s in parsed if s is not None for h in s.entries]
        self.images = len(tables)

    # -- installation -------------------------------------------------------------------------------------

    @contextmanager
    def applied(self, pipe, rows: Callable[[int], CallRows]) -> Iterator[PerturbationState]:
        """Install processors and hooks for one pipeline call; restore everything afterwards, also on errors."""
        state = PerturbationState(self.identity)
        runner = _Runner(self, pipe, state, rows)
        with ExitStack() as stack:
            stack.enter_context(install_processors(self.denoiser, self.layout, self.modules, state))
            for handle in runner.register():
                stack.callback(handle.remove)
            yield state


@contextmanager
def install_processors(
    denoiser: torch.nn.Module, layout: ModelLayout, names: Sequence[str], state
) -> Iterator[None]:
    """Put SoftPAG processors on `names` for the duration; put the previous ones back whatever happens."""
    allowed = REPLACEABLE[layout.arch]
    originals = {}
    for name in names:
        processor = denoiser.get_submodule(name).processor
        kind = type(processor).__name__
        if kind not in allowed:
            hint = " (call pipe.disable_xformers_memory_efficient_attention())" if "XFormers" in kind else ""
            raise SoftPAGError(
                f"pag_heads: {name} uses {kind}, which SoftPAG would silently drop; SoftPAG replaces only "
                f"{', '.join(allowed)}{hint}. IP-Adapter, xformers and fused projections are not supported "
                "on perturbed layers."
            )
        originals[name] = processor
    installed = {name: layout.processor(state, name) for name in names}
    try:
        for name, processor in installed.items():
            denoiser.get_submodule(name).set_processor(processor)
        yield
        replaced = [n for n, p in installed.items() if denoiser.get_submodule(n).processor is not p]
        if replaced:
            raise SoftPAGError(
                f"the attention processors of {replaced} were replaced during the call (e.g. by "
                "enable_xformers_memory_efficient_attention or an IP-Adapter loader); SoftPAG was not applied"
            )
    finally:
        for name, processor in originals.items():
            denoiser.get_submodule(name).set_processor(processor)


def _take_rows(value, index: torch.Tensor, rows: int):
    """Select batch rows `index` of every tensor (or dict of tensors) whose first dimension is `rows`."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value.index_select(0, index.to(value.device))
    if isinstance(value, dict):
        return {k: _take_rows(v, index, rows) for k, v in value.items()}
    return value


class _Runner:
    """The hooks of one call; `active` tells whether the current denoiser call carries perturbed rows."""

    def __init__(self, pag: SoftPAG, pipe, state: PerturbationState, rows: Callable[[int], CallRows]):
        self.pag, self.pipe, self.state, self.rows = pag, pipe, state, rows
        self.signature = inspect.signature(pag.denoiser.forward)
        self.cond_pointer: int | None = None
        self.calls = 0
        self.built_for: tuple[int, int] | None = None
        self.active = False

    def register(self) -> list:
        """Register the hooks; returns their handles."""
        denoiser = self.pag.denoiser
        handles = [
            denoiser.register_forward_pre_hook(self.before, with_kwargs=True),
            denoiser.register_forward_hook(self.after, with_kwargs=True),
        ]
        if self.pag.split_block is not None:
            for i, name in enumerate(self.pag.layout.blocks[: self.pag.split_block + 1]):
                hook = self.split if i == self.pag.split_block else self.prefix
                handles.append(denoiser.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    def _is_main_call(self, inputs: dict) -> bool:
        """False for a step's extra denoiser calls: SD3 skip-layer guidance, FLUX's separate true-CFG uncond call."""
        if inputs.get("skip_layers"):
            return False
        if self.pag.layout.arch == "flux":
            # FLUX passes the same prompt_embeds tensor to every cond call; the uncond call passes another one.
            pointer = inputs["encoder_hidden_states"].data_ptr()
            self.cond_pointer = self.cond_pointer or pointer
            return pointer == self.cond_pointer
        return True

    def _in_window(self, inputs: dict) -> bool:
        """True when this call carries the perturbed rows: a main call inside [start, stop) of the schedule."""
        if not self._is_main_call(inputs):
            return False
        # Model evaluations so far over those the scheduler plans (Heun-type schedulers plan two per step).
        fraction = self.calls / max(len(self.pipe.scheduler.timesteps), 1)
        self.calls += 1
        return self.pag.start <= fraction < self.pag.stop

    def before(self, module, args, kwargs):
        bound = self.signature.bind(*args, **kwargs)
        inputs = bound.arguments
        self.active = self._in_window(inputs)
        self.state.strengths = {}
        if not self.active:
            return None
        first = "sample" if self.pag.layout.arch == "unet" else "hidden_states"
        n = inputs[first].shape[0]
        rows = self.rows(n)
        cond = torch.arange(n)[rows.cond]
        groups = len(self.pag.group_strengths)
        self.n, self.cond_index, self.divisor = n, cond, rows.cfg_divisor
        self.index = torch.cat([torch.arange(n), cond.repeat(groups)])
        total = self.index.numel()
        size = len(cond)
        if self.pag.images is not None and self.pag.images != size:
            raise SoftPAGError(
                f"pag_heads_per_image has {self.pag.images} selections but the call generates {size} images"
            )
        if self.built_for != (n, size):  # the same every step of a call: build once, on the model's device
            device = inputs[first].device
            self.strengths = {}
            for name in self.pag.modules:
                u = torch.zeros(total, self.pag.layout.heads_of(name), device=device)
                for g, table in enumerate(self.pag.group_strengths):
                    if name in table:
                        u[n + g * size : n + (g + 1) * size] = table[name].to(device)
                self.strengths[name] = u
            self.built_for = (n, size)
        self.state.strengths = self.strengths
        if self.pag.layout.arch == "unet":
            names = UNET_INPUTS
        elif self.pag.split_block is None:
            names = TEMB_INPUTS[self.pag.layout.arch] + STREAM_INPUTS
        else:
            names = TEMB_INPUTS[self.pag.layout.arch]
        for name in names:
            if name in inputs:
                inputs[name] = _take_rows(inputs[name], self.index, n)
        if "encoder_hidden_states" in inputs and self.pag.layout.arch == "flux":
            self.state.text_tokens = inputs["encoder_hidden_states"].shape[1]
        return bound.args, bound.kwargs

    def prefix(self, module, args, kwargs):
        """Blocks before the split run the original rows: give them the matching rows of the time embedding."""
        if self.active:
            kwargs["temb"] = kwargs["temb"][: self.n]
        return args, kwargs

    def split(self, module, args, kwargs):
        """The first perturbed block: copy the cond rows of both streams for every head group."""
        if self.active:
            for name in STREAM_INPUTS:
                kwargs[name] = _take_rows(kwargs[name], self.index, self.n)
        return args, kwargs

    def after(self, module, args, kwargs, output):
        if not self.active:
            return output
        self.active = False
        self.state.strengths = {}
        sample = output[0] if isinstance(output, tuple) else output.sample
        base = sample[: self.n].clone()
        cond = base[self.cond_index]
        delta = torch.zeros_like(cond)
        size = len(self.cond_index)
        for g, scale in enumerate(self.pag.scales):
            perturbed = sample[self.n + g * size : self.n + (g + 1) * size]
            delta += scale * (cond - perturbed)
        base[self.cond_index] = cond + delta / self.divisor
        if isinstance(output, tuple):
            return (base, *output[1:])
        output.sample = base
        return output
