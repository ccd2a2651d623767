"""Generic attention-site adapter: SoftPAG at the attention call of any diffusers transformer that routes it through
`dispatch_attention_fn` (FLUX.1/.2, Chroma, Qwen-Image, Z-Image, Wan) or `F.scaled_dot_product_attention` (SD3).

Instead of re-implementing each model's attention processor (projections, qk-norm, RoPE, token order), the
adapter wraps the model's own processor: `GenericAttnProcessor` runs the original `__call__` with
`dispatch_attention_fn` (and `F.scaled_dot_product_attention`) replaced *in that function's globals only* by a
substitute that applies `guidance.softpag.softpag_attention` to the q, k, v it receives, in the layout the call
actually has ((batch, tokens, heads, dim) for `dispatch_attention_fn`, (batch, heads, tokens, dim) for SDPA).
The user's attention backend passes through (the substitute calls the original `dispatch_attention_fn` with the
same `backend=`), unlike diffusers' `PerturbedAttentionGuidance`, which intercepts only PyTorch's SDPA.
Nothing global is patched: other modules, other threads and other calls see the original functions.

Support is checked, never assumed: a processor whose `__call__` names neither function is refused with its class
name, and a perturbed module whose forward made no intercepted call raises instead of returning unperturbed rows.

Layer numbering and token orders come from `guidance.layouts.FAMILIES`, the same as the hand-written fast paths
(`guidance.adapters.heads_layout` chooses between them). Every batch-sized input of the denoiser grows with the
perturbed rows; there is no shared prefix.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn

from guidance.config import SoftPAGError
from guidance.layouts import BatchInputs, ModelLayout, attention_sites, family_of
from guidance.processors import PerturbationState, perturbation
from guidance.scope import CallScope, current, running
from guidance.softpag import softpag_attention

__all__ = ["GenericAttnProcessor", "generic_layout", "intercepted_calls"]

# Names under which a processor's `__call__` reaches the attention kernels.
_DISPATCH, _SDPA = "dispatch_attention_fn", "scaled_dot_product_attention"


def generic_layout(denoiser: torch.nn.Module) -> ModelLayout:
    """The generic layout of a transformer of a known family (`guidance.layouts.FAMILIES`) whose processors call an
    interceptable function: every batch-sized input grows, no shared prefix."""
    family = family_of(denoiser)
    if family is None:
        raise TypeError(f"SoftPAG has no generic layout for {type(denoiser).__name__} (a UNet)")
    arch, sites, _, orders = attention_sites(denoiser)
    classes = {"GenericAttnProcessor"}
    for site in sites.values():
        classes.add(_check_interceptable(site.name, denoiser.get_submodule(site.name).processor))
    factory = functools.partial(GenericAttnProcessor.around, denoiser, orders)
    inputs = BatchInputs(unbatched=family.unbatched)
    return ModelLayout(arch, sites, (), factory, tuple(sorted(classes)), inputs, orders)


def _check_interceptable(name: str, processor) -> str:
    """The processor's class name if its `__call__` calls `dispatch_attention_fn` or SDPA; else refuse."""
    if isinstance(processor, GenericAttnProcessor):
        processor = processor.inner
    names = type(processor).__call__.__code__.co_names
    if _DISPATCH not in names and _SDPA not in names:
        raise SoftPAGError(
            f"pag_heads: {name} uses {type(processor).__name__}, whose attention does not go through "
            f"dispatch_attention_fn or F.scaled_dot_product_attention; SoftPAG cannot perturb it generically"
        )
    return type(processor).__name__


# ---------------------------------------------------------------------------------------------------------
# The processor wrapper and the substitute attention functions
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Site:
    """The module now running its processor (its running state, `scope.running`): its name, the image tokens of
    its sequence, the running call's perturbation, the calls intercepted."""

    name: str
    order: str | None
    text_tokens: int | None
    state: PerturbationState
    calls: int = 0


@dataclass
class _DryRun(PerturbationState):
    """`intercepted_calls`' state: nothing perturbed; intercepted attention calls counted per module."""

    counts: dict[str, int] = field(default_factory=dict)


def _image_tokens(site: _Site, tokens: int) -> slice:
    """The image tokens of a `tokens`-long sequence at this site, for the "image" identity."""
    if site.order == "image":
        return slice(0, tokens)
    if site.order is None or site.text_tokens is None:
        raise SoftPAGError(
            f"pag_identity='image': the token order of {site.name} is not known (padded or unknown text "
            "length); use pag_identity='joint'"
        )
    if site.order == "image-text":
        return slice(0, tokens - site.text_tokens)
    return slice(site.text_tokens, tokens)


def _perturbed(query, key, value, mask, attend: Callable, heads_dim: int) -> torch.Tensor:
    """softpag_attention at the intercepted call: `attend(q, k, v, mask)` is the model's own attention call and
    `heads_dim` where its heads sit (2 for (batch, tokens, heads, dim), 1 for (batch, heads, tokens, dim))."""
    site = current(_Site)
    if site is None:  # a call from outside a wrapped processor (never from its own `__call__`)
        return attend(query, key, value, mask)
    site.calls += 1
    state = site.state
    u = state.strength(site.name, query.shape[0])
    if u is None or not bool(u.any()):
        return attend(query, key, value, mask)
    if heads_dim == 2:  # (B, T, H, D) -> the (B, H, T, D) views softpag_attention works on; no copies
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    if query.shape[1:3] != value.shape[1:3]:  # the identity map needs one value per query token and head
        raise SoftPAGError(
            f"pag_heads: {site.name} has {tuple(query.shape[1:3])} query (heads, tokens) but "
            f"{tuple(value.shape[1:3])} value ones (cross-attention or grouped-query attention)"
        )
    rows = u.any(dim=-1).nonzero().flatten()  # the rows whose "image" target softpag_attention computes

    def attention(q, k, v, identity_mask):
        m = mask if identity_mask is None else _combined(mask, identity_mask, rows, site.name)
        if heads_dim == 2:
            return attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), m).transpose(1, 2)
        return attend(q, k, v, m)

    image = _image_tokens(site, query.shape[-2]) if state.identity == "image" else None
    out = softpag_attention(query, key, value, u.to(query.device), state.identity, image, attention)
    return out.transpose(1, 2) if heads_dim == 2 else out


def _combined(
    mask: torch.Tensor | None, identity: torch.Tensor, rows: torch.Tensor, name: str
) -> torch.Tensor:
    """The model's own attention mask (boolean, True = attend, or additive) restricted to the identity's pattern,
    for the perturbed `rows` (the model's mask may carry one entry per batch row, e.g. Chroma's text padding)."""
    if mask is None:
        return identity
    if mask.ndim == 4 and mask.shape[0] > 1:
        mask = mask[rows.to(mask.device)]
    if mask.ndim not in (2, 4):
        raise SoftPAGError(f"pag_identity='image' on {name}: its attention mask of shape {tuple(mask.shape)} "
                           "cannot be combined with the identity; use 'joint'")  # fmt: skip
    if mask.dtype == torch.bool:
        return mask & identity
    return mask.masked_fill(~identity, float("-inf"))


def _dispatch_substitute(query, key, value, attn_mask=None, *args, **kwargs):
    """`dispatch_attention_fn` as seen by a wrapped processor: SoftPAG on the rows and heads of the running call."""

    def attend(q, k, v, mask):
        return dispatch_attention_fn(q, k, v, mask, *args, **kwargs)

    return _perturbed(query, key, value, attn_mask, attend, heads_dim=2)


def _sdpa_substitute(query, key, value, attn_mask=None, *args, **kwargs):
    """`F.scaled_dot_product_attention` as seen by a wrapped processor (SD3's JointAttnProcessor2_0)."""

    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, mask, *args, **kwargs)

    return _perturbed(query, key, value, attn_mask, attend, heads_dim=1)


class _Functional(types.ModuleType):
    """`torch.nn.functional` with `scaled_dot_product_attention` replaced by the substitute."""

    scaled_dot_product_attention = staticmethod(_sdpa_substitute)

    def __getattr__(self, name):
        return getattr(F, name)


_FUNCTIONAL = _Functional("torch.nn.functional")


@functools.cache
def _substituted(function: types.FunctionType) -> types.FunctionType:
    """A copy of `function` whose globals name the substitutes (the module's own globals stay untouched)."""
    namespace = dict(function.__globals__)
    namespace[_DISPATCH] = _dispatch_substitute
    if namespace.get("F") is F:
        namespace["F"] = _FUNCTIONAL
    copy = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


class GenericAttnProcessor:
    """Wraps a module's own attention processor; its attention call gets SoftPAG for the running call's rows."""

    def __init__(self, name: str, inner, order: str | None):
        self.name, self.inner, self.order = name, inner, order
        self.share_key = ("GenericAttnProcessor", name)
        self._call = types.MethodType(_substituted(type(inner).__call__), inner)
        self._signature = inspect.signature(type(inner).__call__)
        # diffusers' Attention.forward drops keyword arguments that `inspect.signature(processor.__call__)` does
        # not name; the instance attribute shows it the wrapped processor's signature (calls still go through
        # the class's `__call__` below).
        self.__call__ = self._call

    @classmethod
    def around(cls, denoiser: torch.nn.Module, orders: dict, name: str) -> GenericAttnProcessor:
        """The wrapper for module `name` of `denoiser`, around the processor it holds now."""
        return cls(name, denoiser.get_submodule(name).processor, orders[name])

    # The attention backend (`set_attention_backend`) and parallel config live on the wrapped processor.
    _attention_backend = property(
        lambda self: getattr(self.inner, "_attention_backend", None),
        lambda self, value: setattr(self.inner, "_attention_backend", value),
    )
    _parallel_config = property(
        lambda self: getattr(self.inner, "_parallel_config", None),
        lambda self, value: setattr(self.inner, "_parallel_config", value),
    )

    def _text_tokens(self, state: PerturbationState, attn, args, kwargs) -> int | None:
        """Text length: the processor's own `encoder_hidden_states` (joint blocks) or the call's (single-stream)."""
        bound = self._signature.bind_partial(self.inner, attn, *args, **kwargs).arguments
        context = bound.get("encoder_hidden_states")
        if isinstance(context, torch.Tensor):
            return context.shape[1]
        return state.text_tokens if self.order == "single" else None

    def __call__(self, attn, *args, **kwargs):
        state = perturbation()
        text = (
            self._text_tokens(state, attn, args, kwargs) if state.identity == "image" else None
        )  # only "image"
        site = _Site(self.name, self.order, text, state)
        with running(site):
            out = self._call(attn, *args, **kwargs)
        if isinstance(state, _DryRun) and self.name in state.counts:
            state.counts[self.name] += site.calls
        if site.calls == 0 and self.name in state.strengths:
            raise SoftPAGError(
                f"pag_heads: {self.name} ({type(self.inner).__name__}) made no intercepted attention call; "
                "it was not perturbed"
            )
        return out


def intercepted_calls(denoiser: torch.nn.Module, forward: Callable[[], object]) -> dict[str, int]:
    """Dry run: wrap every site of the generic layout, run `forward()` and count intercepted attention calls per
    module. Raises SoftPAGError naming the modules (and their processor class) that made none."""
    layout = generic_layout(denoiser)
    wrappers = {site.name: layout.processor(site.name) for site in layout.sites.values()}
    counts = dict.fromkeys(wrappers, 0)
    scope = CallScope(_DryRun(counts=counts), "pag_heads", SoftPAGError)
    with scope.processors(denoiser, wrappers, layout.replaceable), torch.no_grad():
        forward()
    silent = [f"{n} ({type(wrappers[n].inner).__name__})" for n, c in counts.items() if c == 0]
    if silent:
        raise SoftPAGError(f"{type(denoiser).__name__}: no intercepted attention call in {silent}")
    return counts
