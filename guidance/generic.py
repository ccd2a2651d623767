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

Layer numbering (`FAMILIES`): one global index over the model's block lists in order, as the paper numbers FLUX.1
(double-stream blocks first, then single-stream ones). `attn` is a block's main attention, `attn2` a second one.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn

from guidance.batch_rows import RowLayout
from guidance.config import SoftPAGError
from guidance.layouts import AttentionSite, ModelLayout
from guidance.perturbation import (
    SoftPAG,
    _SoftPAGCall,
)
from guidance.processors import PerturbationState, active_state, perturbing
from guidance.softpag import softpag_attention
from guidance.swap import swapped_processors

__all__ = [
    "FAMILIES", "Family", "GenericAttnProcessor", "GenericLayout", "GenericSoftPAG", "expand_batch",
    "generic_layout", "intercepted_calls",
]  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# Families: block lists, attention names, token order
# ---------------------------------------------------------------------------------------------------------

# How a site's tokens are ordered, for the "image" identity (the image->image block set to the diagonal):
#   "image-text": [image, text] joint attention (SD3); "text-image": [text, image] (FLUX.1/.2, Chroma, Qwen-Image);
#   "single": the already concatenated [text, image] sequence of a single-stream block (text length from the
#   denoiser's `encoder_hidden_states`); "image": image tokens only (Wan self-attention, SD3.5's attn2);
#   None: unknown per-row order (Z-Image's padded unified sequence): only the "joint" identity.


@dataclass(frozen=True)
class Family:
    """Where a transformer family keeps its heads: [(block list, {notation: (module attribute, token order)})]."""

    name: str
    blocks: tuple[tuple[str, tuple[tuple[str, str, str | None], ...]], ...]
    unbatched: tuple[str, ...] = ()  # inputs never expanded (e.g. FLUX.1's (tokens, 3) position ids)


_DOUBLE_SINGLE = (
    ("transformer_blocks", (("attn", "attn", "text-image"),)),
    ("single_transformer_blocks", (("attn", "attn", "single"),)),
)

# Transformer class name -> family. Layer i is the i-th block over the listed block lists, in order.
FAMILIES: dict[str, Family] = {
    "SD3Transformer2DModel": Family(
        "sd3", (("transformer_blocks", (("attn", "attn", "image-text"), ("attn2", "attn2", "image"))),)
    ),
    "FluxTransformer2DModel": Family("flux", _DOUBLE_SINGLE, unbatched=("txt_ids", "img_ids")),
    "Flux2Transformer2DModel": Family("flux2", _DOUBLE_SINGLE),
    "ChromaTransformer2DModel": Family("chroma", _DOUBLE_SINGLE, unbatched=("txt_ids", "img_ids")),
    "QwenImageTransformer2DModel": Family(
        "qwenimage", (("transformer_blocks", (("attn", "attn", "text-image"),)),)
    ),
    "ZImageTransformer2DModel": Family("zimage", (("layers", (("attn", "attention", None),)),)),
    "WanTransformer3DModel": Family("wan", (("blocks", (("attn", "attn1", "image"),)),)),
}

# Names under which a processor's `__call__` reaches the attention kernels.
_DISPATCH, _SDPA = "dispatch_attention_fn", "scaled_dot_product_attention"


@dataclass(frozen=True)
class GenericLayout(ModelLayout):
    """A `ModelLayout` for the generic adapter: also the family, each site's token order and the processor class
    names it wraps (what `swapped_processors` may replace)."""

    family: Family | None = None
    orders: tuple[tuple[str, str | None], ...] = ()
    replaceable: tuple[str, ...] = ()


def generic_layout(denoiser: torch.nn.Module) -> GenericLayout:
    """The generic layout of a transformer of a known family whose processors call an interceptable function."""
    family = FAMILIES.get(type(denoiser).__name__)
    if family is None:
        raise TypeError(
            f"SoftPAG has no layout for {type(denoiser).__name__}; generic support covers {sorted(FAMILIES)}"
        )
    sites: dict[tuple[int, str], AttentionSite] = {}
    blocks, orders, classes = [], [], {"GenericAttnProcessor"}
    for list_name, attentions in family.blocks:
        for i in range(len(getattr(denoiser, list_name))):
            block, layer = f"{list_name}.{i}", len(blocks)
            blocks.append(block)
            for notation, attribute, order in attentions:
                module = getattr(denoiser.get_submodule(block), attribute, None)
                if module is None:
                    continue
                name = f"{block}.{attribute}"
                classes.add(_check_interceptable(name, module.processor))
                sites[layer, notation] = AttentionSite(name, layer, notation, module.heads)
                orders.append((name, order))
    factory = functools.partial(GenericAttnProcessor.around, denoiser, dict(orders))
    return GenericLayout(family.name, sites, (), factory, family, tuple(orders), tuple(sorted(classes)))


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
    """The module now running its processor: its name, the image tokens of its sequence, calls intercepted."""

    name: str
    order: str | None
    text_tokens: int | None
    calls: int = 0


_SITE: ContextVar[_Site | None] = ContextVar("softpag_generic_site", default=None)
_PLAIN = PerturbationState()
_COUNTS: ContextVar[dict[str, int] | None] = ContextVar("softpag_generic_counts", default=None)


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
    site = _SITE.get()
    if site is None:  # a call from outside a wrapped processor (never from its own `__call__`)
        return attend(query, key, value, mask)
    site.calls += 1
    state = active_state() or _PLAIN
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

    def _text_tokens(self, attn, args, kwargs) -> int | None:
        """Text length: the processor's own `encoder_hidden_states` (joint blocks) or the call's (single-stream)."""
        bound = self._signature.bind_partial(self.inner, attn, *args, **kwargs).arguments
        context = bound.get("encoder_hidden_states")
        if isinstance(context, torch.Tensor):
            return context.shape[1]
        return (active_state() or _PLAIN).text_tokens if self.order == "single" else None

    def __call__(self, attn, *args, **kwargs):
        state = active_state() or _PLAIN
        text = (
            self._text_tokens(attn, args, kwargs) if state.identity == "image" else None
        )  # only "image" needs it
        site = _Site(self.name, self.order, text)
        token = _SITE.set(site)
        try:
            out = self._call(attn, *args, **kwargs)
        finally:
            _SITE.reset(token)
        counts = _COUNTS.get()
        if counts is not None and self.name in counts:
            counts[self.name] += site.calls
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
    state = PerturbationState(strengths={})
    token = _COUNTS.set(counts)
    try:
        with swapped_processors(denoiser, wrappers, layout.replaceable, "pag_heads", SoftPAGError):
            with perturbing(state), torch.no_grad():
                forward()
    finally:
        _COUNTS.reset(token)
    silent = [f"{n} ({type(wrappers[n].inner).__name__})" for n, c in counts.items() if c == 0]
    if silent:
        raise SoftPAGError(f"{type(denoiser).__name__}: no intercepted attention call in {silent}")
    return counts


# ---------------------------------------------------------------------------------------------------------
# One call: rows and hooks (stands in for the lead's hooks in guidance.perturbation until they land)
# ---------------------------------------------------------------------------------------------------------


def expand_batch(value, layout: RowLayout, rows: int):
    """Every tensor or list whose first dimension is the batch (B rows) as (B + G*C, ...), also inside dicts."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value.index_select(0, layout.index.to(value.device))
    if isinstance(value, list) and len(value) == rows:
        return [value[i] for i in layout.index.tolist()]
    if isinstance(value, dict):
        return {k: expand_batch(v, layout, rows) for k, v in value.items()}
    return value


class _GenericCall(_SoftPAGCall):
    """`_SoftPAGCall` for the generic layout: every batch-sized input grows (tensors and per-sample lists)."""

    def _batch(self, inputs: dict) -> tuple[int, torch.device]:
        first = next(iter(inputs.values()))
        return len(first), (first[0] if isinstance(first, list) else first).device

    def _expand(self, inputs: dict, layout: RowLayout) -> None:
        skip = self.pag.layout.family.unbatched
        for name, value in inputs.items():
            if name not in skip:
                inputs[name] = expand_batch(value, layout, layout.rows)
        self._publish_text_tokens(inputs)

    def _publish_text_tokens(self, inputs: dict) -> None:
        context = inputs.get("encoder_hidden_states")
        self.state.text_tokens = context.shape[1] if isinstance(context, torch.Tensor) else None


class GenericSoftPAG(SoftPAG):
    """SoftPAG on a `GenericLayout`: no shared prefix; every batch-sized input of the denoiser grows."""

    call_class = _GenericCall

    def _layout_of(self, denoiser: torch.nn.Module) -> GenericLayout:
        return generic_layout(denoiser)
