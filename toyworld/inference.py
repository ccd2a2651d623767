"""Inference helpers for the toy models: an exact shortcut for the all-zero "T5" tokens of the toy SD3."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RepeatedTokenJointAttnProcessor:
    """JointAttnProcessor2_0 where the last context token stands for `count` identical copies.

    StableDiffusion3Pipeline appends `max_sequence_length` zero "T5" tokens (here from a null encoder). They
    stay identical through every block, so attending to n copies equals attending to one copy whose logit gets
    + log(n). `count` is an int, or one count per batch row (a tensor), so training can mix lengths.
    """

    def __init__(self, count: int | torch.Tensor):
        self.log_count = torch.log(torch.as_tensor(count, dtype=torch.float32))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        """Joint attention over [image, text] with the repeated token's multiplicity as a logit bias."""
        b, n_image = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = (
            heads(attn.to_q(hidden_states)),
            heads(attn.to_k(hidden_states)),
            heads(attn.to_v(hidden_states)),
        )
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq = heads(attn.add_q_proj(encoder_hidden_states))
        ck = heads(attn.add_k_proj(encoder_hidden_states))
        cv = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        log_count = self.log_count.to(q.dtype).reshape(-1).expand(b)
        bias = torch.zeros(b, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
        bias[:, 0, 0, -1] = log_count
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1]).to(q.dtype)
        image, context = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context
