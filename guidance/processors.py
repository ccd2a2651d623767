"""Attention processors (architecture adapters) that apply SoftPAG to the heads a call selects.

Each processor reproduces the diffusers processor it replaces (projections, qk-norm, RoPE, token order, output
projections) and hands q, k, v to `guidance.softpag.softpag_attention`; it knows the model, not the formula.
What to perturb travels in a `PerturbationState` owned by one call: per attention module, a strength tensor
(batch rows, heads) for the batch now running. A module with no strength entry behaves exactly as plain attention.
The processors read the running call's state from its scope (`guidance.scope.current`; `perturbing(state)` runs one
by hand), so calls that run at once on shared modules (pipelines made with `from_pipe`, in several threads) each
see their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from guidance.scope import current, running
from guidance.softpag import softpag_attention


@dataclass
class PerturbationState:
    """Per-call perturbation: strengths by module name for the current batch, the identity target, text length."""

    identity: str = "joint"
    strengths: dict[str, torch.Tensor] = field(default_factory=dict)
    text_tokens: int | None = None

    def strength(self, name: str, batch: int) -> torch.Tensor | None:
        """The (batch, heads) strengths for module `name`, or None when the current batch perturbs nothing."""
        u = self.strengths.get(name)
        if u is not None and u.shape[0] != batch:
            raise RuntimeError(
                f"SoftPAG state for {name} has {u.shape[0]} rows but the batch has {batch}: the batch was changed "
                "by something outside this call (another hook or a pipeline override)"
            )
        return u


PLAIN = PerturbationState()  # outside a SoftPAG call: no module perturbed


def perturbing(state: PerturbationState):
    """Context manager: `state` as the running call's perturbation for SoftPAG processors run by hand."""
    return running(state)


def active_state() -> PerturbationState | None:
    """The running call's perturbation, or None outside a SoftPAG call."""
    return current(PerturbationState)


def perturbation() -> PerturbationState:
    """The running call's perturbation; outside a call `PLAIN` (nothing perturbed: plain attention)."""
    return current(PerturbationState) or PLAIN


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * dim) -> (batch, heads, tokens, dim)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def project(x: torch.Tensor, projections, norms, heads: int) -> tuple[torch.Tensor, ...]:
    """q, k, v split into heads, with the module's q/k norms (qk-norm) applied where it has them."""
    query, key, value = (split_heads(proj(x), heads) for proj in projections)
    norm_q, norm_k = norms
    return (query if norm_q is None else norm_q(query)), (key if norm_k is None else norm_k(key)), value


class _SoftPAGProcessor:
    """Shared part: the module name this processor serves (the running call's state is read per call)."""

    def __init__(self, name: str):
        self.name = name
        self.share_key = (type(self).__name__, name)

    def _strength(self, state: PerturbationState, batch: int, device: torch.device) -> torch.Tensor | None:
        u = state.strength(self.name, batch)
        return None if u is None else u.to(device)


class SoftPAGJointAttnProcessor(_SoftPAGProcessor):
    """SD3/SD3.5 joint attention ([image, text] tokens) and SD3.5's image-only `attn2`; qk-norm kept."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        state = perturbation()
        batch, image_tokens = hidden_states.shape[:2]
        query, key, value = project(
            hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k), attn.heads
        )
        if encoder_hidden_states is not None:
            context = project(
                encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                (attn.norm_added_q, attn.norm_added_k), attn.heads,
            )  # fmt: skip
            query, key, value = (
                torch.cat(pair, dim=2) for pair in zip((query, key, value), context, strict=True)
            )

        out = softpag_attention(
            query,
            key,
            value,
            self._strength(state, batch, query.device),
            state.identity,
            slice(0, image_tokens),
        )
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        hidden_states, encoder_out = out[:, :image_tokens], out[:, image_tokens:]
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if encoder_hidden_states is None:
            return hidden_states
        if not attn.context_pre_only:
            encoder_out = attn.to_add_out(encoder_out)
        return hidden_states, encoder_out


class SoftPAGFluxAttnProcessor(_SoftPAGProcessor):
    """FLUX.1 attention: double-stream ([text, image]) and single-stream (pre-concatenated) blocks, with RoPE."""

    _attention_backend = None
    _parallel_config = None

    def _attend(self, query, key, value, mask):
        # dispatch_attention_fn takes (batch, tokens, heads, dim); keep the user's backend choice.
        return dispatch_attention_fn(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        ).transpose(1, 2)

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None
    ):
        if attention_mask is not None:
            raise ValueError("SoftPAG on FLUX does not support attention_mask")
        state = perturbation()
        batch, tokens = hidden_states.shape[:2]
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        text_tokens = state.text_tokens or 0
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            if attn.fused_projections:
                ctx = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                ctx = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                       attn.add_v_proj(encoder_hidden_states))  # fmt: skip
            ctx_q, ctx_k, ctx_v = (t.unflatten(-1, (-1, attn.head_dim)) for t in ctx)
            ctx_q, ctx_k = attn.norm_added_q(ctx_q), attn.norm_added_k(ctx_k)
            query, key, value = (
                torch.cat(pair, dim=1) for pair in ((ctx_q, query), (ctx_k, key), (ctx_v, value))
            )
            text_tokens = encoder_hidden_states.shape[1]
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        out = softpag_attention(
            query, key, value, self._strength(state, batch, query.device), state.identity,
            slice(text_tokens, None), attention=self._attend,
        )  # fmt: skip
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        encoder_out, hidden_states = out[:, :text_tokens], out[:, text_tokens:]
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_out.contiguous())


def unet_tokens(attn, hidden_states: torch.Tensor, temb=None) -> tuple[torch.Tensor, torch.Size]:
    """The prologue of diffusers' UNet attention: spatial norm, (B, C, H, W) -> tokens, group norm; also the
    input shape, for `unet_output`."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = hidden_states.shape
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, shape


def unet_output(attn, out: torch.Tensor, residual: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The epilogue: (batch, heads, tokens, dim) -> output projection, tokens -> (B, C, H, W), residual, rescale."""
    out = out.transpose(1, 2).flatten(2, 3)
    out = attn.to_out[1](attn.to_out[0](out))
    if len(shape) == 4:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class SoftPAGSelfAttnProcessor(_SoftPAGProcessor):
    """UNet self-attention (`attn1` of SD1.x/2.x/SDXL), PAG's original home: every token is an image token."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                f"SoftPAG on UNet self-attention ({self.name}) takes no context and no attention_mask"
            )
        residual = hidden_states
        hidden_states, shape = unet_tokens(attn, hidden_states, temb)
        query, key, value = project(
            hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k), attn.heads
        )
        state = perturbation()
        u = self._strength(state, hidden_states.shape[0], query.device)
        out = softpag_attention(query, key, value, u, state.identity, None)
        return unet_output(attn, out.to(query.dtype), residual, shape)
