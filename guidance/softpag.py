"""SoftPAG math: attention with chosen heads' maps interpolated toward an identity, without materialising maps.

From "Fine-Grained Perturbation Guidance via Attention Head Selection" (2025): for a perturbed head the map
A becomes (1 - u) A + u I. With the identity over the whole joint sequence ("joint"), the output is
(1 - u) SDPA(q, k, v) + u v, since I v = v. With the identity only on the image->image block ("image", as
diffusers' PAG for SD3), the target map is the masked softmax in which image queries see their own image token
and every text token; the output is (1 - u) SDPA(q, k, v) + u SDPA(q, k, v, mask).

All tensors are (batch, heads, tokens, head_dim); `strength` is (batch, heads), 0 = untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IDENTITIES = ("joint", "image")

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None):
    """Plain scaled dot-product attention on (batch, heads, tokens, head_dim) tensors."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def image_identity_mask(tokens: int, image_tokens: slice, device: torch.device) -> torch.Tensor:
    """Boolean mask (True = attend) whose image->image block is the identity; everything else attends freely."""
    allowed = torch.ones(tokens, tokens, dtype=torch.bool, device=device)
    n = len(range(*image_tokens.indices(tokens)))
    allowed[image_tokens, image_tokens] = torch.eye(n, dtype=torch.bool, device=device)
    return allowed


def softpag_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    strength: torch.Tensor | None,
    identity: str = "joint",
    image_tokens: slice | None = None,
    attention: AttentionFn = sdpa,
) -> torch.Tensor:
    """Attention whose heads are pulled toward the identity map with per-row, per-head strength u."""
    out = attention(query, key, value, None)
    if strength is None:
        return out
    rows = strength.any(dim=-1).nonzero().flatten()
    if rows.numel() == 0:
        return out
    u = strength[rows].to(out.dtype)[:, :, None, None]
    if identity == "joint":
        target = value[rows]
    elif identity == "image":
        mask = image_identity_mask(query.shape[-2], image_tokens or slice(None), query.device)
        target = attention(query[rows], key[rows], value[rows], mask)
    else:
        raise ValueError(f"pag_identity={identity!r} is not supported; allowed: {IDENTITIES}")
    out = out.clone() if out.requires_grad else out
    out[rows] = torch.lerp(out[rows], target, u)
    return out
