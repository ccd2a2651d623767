"""Structured cross-attention (StructureDiffusion, Feng et al., ICLR 2023): noun phrases encoded on their own and
mixed into cross-attention, for better attribute binding.

Aligned sequences: W̄_i = W_p (the full prompt's encoding) with phrase i's token span replaced by the phrase's own
encoding W_i. Key-value mode (the paper's default): keys from W_p, output = mean_i A V(W̄_i) over
[W_p, W̄_1..W̄_k]; attention is linear in the values, so this is one attention with the mean value context.
Conjunction mode (the official code's): one value set V(S), key sets K(S), K(W̄_1).., output =
mean_i softmax(Q K_i) V(S), where S is W_p with every phrase span replaced at once (`single_aligned`). Our
earlier variant (W_p in place of S) measured no better and was removed.

How contexts travel: the pipeline passes, per batch row, one tensor that holds every context the processor needs,
concatenated along the token axis, so any batch reordering (CFG, SoftPAG's copies) carries them along:
- key-value: [W_p ; mean value context]              (2L tokens)
- conjunction: [W_p ; W̄_1 ; .. ; W̄_m ; weights]      ((m + 2)L tokens; the weights block's first row holds the
  weight of each key set: 1/(k+1) for the sets of that row, 0 for padding)
Unconditional rows carry the negative prompt in every slot (weights on the first set only): plain attention.
The processors read the running call's state from its scope (`guidance.scope.current`; `structuring(state)` runs
one by hand).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

from guidance.processors import project, split_heads, unet_output, unet_tokens
from guidance.scope import StepWindow, current, running


@dataclass(kw_only=True)
class StructuredCall:
    """What every structured call carries: whether the current step is inside its window, and the window."""

    active: bool = True
    window: StepWindow | None = None


def structuring(state: StructuredCall):
    """Context manager: `state` as the running structured call, for structured processors run by hand."""
    return running(state)


# Outside a structured call (another thread's plain call on shared modules) the processors are the plain ones.
_PLAIN_CROSS, _PLAIN_JOINT = AttnProcessor2_0(), JointAttnProcessor2_0()


Segment = tuple[
    int, int, int
]  # (start, end) in the full prompt's sequence, and where the phrase's own tokens start


def aligned_contexts(full: torch.Tensor, phrases: list[tuple[torch.Tensor, list[Segment]]]) -> torch.Tensor:
    """[W_p, W̄_1, .., W̄_k] (k+1, L, D): W_p with each segment [s, e) replaced by the phrase encoding's tokens
    from its own start (1 after CLIP's BOS; a T5 part starts without one)."""
    contexts = [full]
    for encoding, segments in phrases:
        aligned = full.clone()
        for start, end, source in segments:
            aligned[start:end] = encoding[source : source + end - start]
        contexts.append(aligned)
    return torch.stack(contexts)


def single_aligned(full: torch.Tensor, phrases: list[tuple[torch.Tensor, list[Segment]]]) -> torch.Tensor:
    """W_p with every phrase's segments replaced by that phrase's own tokens, in order (a later, nested phrase
    overwrites an earlier one): the official conjunction mode's value context and first key set (its
    `single_align` writes into W_p through a view)."""
    aligned = full.clone()
    for encoding, segments in phrases:
        for start, end, source in segments:
            aligned[start:end] = encoding[source : source + end - start]
    return aligned


def pack(contexts: torch.Tensor, mode: str, sets: int) -> torch.Tensor:
    """One row's packed context (see module doc) from its [W_p, W̄_1..] stack; `sets` key sets for conjunction."""
    full = contexts[0]
    if mode == "key-value":
        return torch.cat([full, contexts.mean(0)])
    k = contexts.shape[0]
    if sets > full.shape[-1]:
        raise ValueError(
            f"conjunction mode supports at most {full.shape[-1]} key sets per prompt, got {sets}"
        )
    padded = torch.cat([contexts, full.expand(sets - k, *full.shape)]) if sets > k else contexts
    weights = torch.zeros_like(full)
    weights[0, :k] = 1.0 / k
    return torch.cat([full, *padded, weights])


def plain_pack(context: torch.Tensor, mode: str, sets: int) -> torch.Tensor:
    """The packed form of an unstructured context (unconditional rows): plain attention on it."""
    return pack(context[None], mode, sets)


def naive_key_value(query, key, values: list[torch.Tensor]) -> torch.Tensor:
    """Reference: k+1 attention products A V_i, averaged (for tests of the mean-value shortcut)."""
    attn = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1)
    return torch.stack([attn @ v for v in values]).mean(0)


@dataclass
class StructuredState(StructuredCall):
    """Per call (UNets): mode, the text length L of one context, number of key sets."""

    mode: str
    length: int
    sets: int = 1


class StructuredCrossAttnProcessor:
    """UNet cross-attention (`attn2`) reading packed contexts; `structured=False` layers use W_p only."""

    def __init__(self, structured: bool):
        self.structured = structured
        self.share_key = ("structured-cross", structured)

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        state = current(StructuredState)
        if state is None:
            return _PLAIN_CROSS(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if encoder_hidden_states is None or attention_mask is not None:
            raise ValueError("structured cross-attention needs encoder_hidden_states and no attention_mask")
        residual = hidden_states
        hidden_states, shape = unet_tokens(attn, hidden_states, temb)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        length = state.length
        # contiguous: to_k / to_v on a strided slice of the packed context cost more than the copy
        full = encoder_hidden_states[:, :length].contiguous()
        query, key = (
            split_heads(attn.to_q(hidden_states), attn.heads),
            split_heads(attn.to_k(full), attn.heads),
        )
        on = self.structured and state.active
        if state.mode == "key-value":
            values = encoder_hidden_states[:, length : 2 * length].contiguous() if on else full
            out = F.scaled_dot_product_attention(query, key, split_heads(attn.to_v(values), attn.heads))
        elif not on:
            out = F.scaled_dot_product_attention(query, key, split_heads(attn.to_v(full), attn.heads))
        else:
            value = split_heads(attn.to_v(full), attn.heads)
            weights = encoder_hidden_states[:, -length, : state.sets]  # (batch, sets)
            out = 0
            for j in range(state.sets):
                keys = split_heads(
                    attn.to_k(encoder_hidden_states[:, (j + 1) * length : (j + 2) * length]), attn.heads
                )
                part = F.scaled_dot_product_attention(query, keys, value)
                out = out + weights[:, j, None, None, None].to(part.dtype) * part
        return unet_output(attn, out.to(query.dtype), residual, shape)


# -------------------------------------------------------------------------------------------------------------
# MMDiT (SD3) port — an experiment: no paper or public code does this
# -------------------------------------------------------------------------------------------------------------


@dataclass
class JointStructuredState(StructuredCall):
    """Per call (SD3): the input-level offset d = embed(mean aligned) - embed(W_p) of the text stream, and per
    structured block the normalised value context the processor reads."""

    delta: torch.Tensor | None = None
    value_context: dict[str, torch.Tensor] | None = None
    length: int = 0  # L, the tokens of the full prompt at the front of the packed context
    chosen: frozenset[str] = frozenset()  # the structured attention modules of this call


class StructuredJointAttnProcessor:
    """SD3 joint attention whose text tokens give keys (and queries) from the full-prompt stream c_l but values
    from norm(c_l + d): the offset d between the mean aligned context and the full prompt, taken at the input
    and carried to block l. At block 0 this is key-value structured attention up to the LayerNorm; deeper, an
    approximation (the aligned streams themselves are never computed)."""

    def __init__(self, name: str):
        self.name = name
        self.share_key = ("structured-joint", name)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        state = current(JointStructuredState)
        if state is None:
            return _PLAIN_JOINT(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        image_tokens = hidden_states.shape[1]
        query, key, value = project(
            hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k), attn.heads
        )
        ctx_q, ctx_k, ctx_v = project(
            encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
            (attn.norm_added_q, attn.norm_added_k), attn.heads,
        )  # fmt: skip
        values = (state.value_context or {}).get(self.name) if state.active else None
        if values is not None:
            ctx_v = split_heads(attn.add_v_proj(values), attn.heads)
        out = F.scaled_dot_product_attention(
            torch.cat([query, ctx_q], 2), torch.cat([key, ctx_k], 2), torch.cat([value, ctx_v], 2)
        )
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        hidden, context = out[:, :image_tokens], out[:, image_tokens:]
        hidden = attn.to_out[1](attn.to_out[0](hidden))
        return hidden, (context if attn.context_pre_only else attn.to_add_out(context))
