"""SoftPAG attention math and processors, checked against diffusers' own processors."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from fixtures.tiny import TINY_PIPELINES
from guidance.processors import PerturbationState, perturbing
from guidance.softpag import image_identity_mask, softpag_attention

torch.manual_seed(0)
Q, K, V = (torch.randn(3, 4, 10, 8) for _ in range(3))


def test_strength_zero_is_plain_attention_exactly():
    out = softpag_attention(Q, K, V, torch.zeros(3, 4))
    assert torch.equal(out, F.scaled_dot_product_attention(Q, K, V))


def test_joint_strength_one_returns_values():
    u = torch.zeros(3, 4)
    u[1] = 1.0
    out = softpag_attention(Q, K, V, u)
    torch.testing.assert_close(out[1], V[1], rtol=0, atol=0)
    assert torch.equal(out[0], F.scaled_dot_product_attention(Q, K, V)[0])


def test_joint_is_interpolation_of_the_map():
    """(1-u) A + u I, with A materialised here only to check the SDPA shortcut (tolerance 1e-5)."""
    u = torch.rand(3, 4)
    attn = torch.softmax(Q @ K.transpose(-1, -2) / 8**0.5, dim=-1)
    mixed = (1 - u[..., None, None]) * attn + u[..., None, None] * torch.eye(10)
    torch.testing.assert_close(softpag_attention(Q, K, V, u), mixed @ V, atol=1e-5, rtol=1e-5)


def test_image_identity_keeps_text():
    """`image`: image queries see their own token and all text tokens; text queries are untouched."""
    u = torch.full((3, 4), 0.7)
    image = slice(0, 6)
    out = softpag_attention(Q, K, V, u, "image", image)
    logits = Q @ K.transpose(-1, -2) / 8**0.5
    mask = image_identity_mask(10, image, Q.device)
    target = torch.softmax(logits.masked_fill(~mask, -torch.inf), -1)
    mixed = 0.3 * torch.softmax(logits, -1) + 0.7 * target
    torch.testing.assert_close(out, mixed @ V, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., 6:, :], F.scaled_dot_product_attention(Q, K, V)[..., 6:, :])


def test_unknown_identity_names_parameter():
    with pytest.raises(ValueError, match="pag_identity='diag'"):
        softpag_attention(Q, K, V, torch.ones(3, 4), "diag")


# -- processors against diffusers' processors ------------------------------------------------------------


def _run(processor_class, state, name, *args, **kwargs):
    """One processor call with `state` as the running call's perturbation."""
    with perturbing(state):
        return processor_class(name)(*args, **kwargs)


def _state(name, rows, heads, u):
    strengths = torch.zeros(rows, heads)
    strengths[1:] = u
    return PerturbationState(strengths={name: strengths})


@pytest.mark.parametrize("name", ["sd3", "sd35"])
def test_sd3_processor_matches_diffusers_and_gives_values(name):
    from guidance.processors import SoftPAGJointAttnProcessor

    transformer = TINY_PIPELINES[name]().transformer
    torch.manual_seed(1)
    for block, kind in ((0, "attn"), (0, "attn2"), (3, "attn")):
        attn = getattr(transformer.transformer_blocks[block], kind, None)
        if attn is None:  # SD3 has no attn2
            continue
        module_name = f"transformer_blocks.{block}.{kind}"
        x = torch.randn(2, 16, transformer.inner_dim)
        ctx = None if module_name.endswith("attn2") else torch.randn(2, 5, transformer.inner_dim)
        ref = JointAttnProcessor2_0()(attn, x, ctx)
        # Row 0 untouched (u=0), row 1 fully perturbed: row 0 must equal diffusers' output exactly.
        ours = _run(
            SoftPAGJointAttnProcessor, _state(module_name, 2, attn.heads, 1.0), module_name, attn, x, ctx
        )
        ref, ours = (r if isinstance(r, tuple) else (r,) for r in (ref, ours))
        for a, b in zip(ref, ours, strict=True):
            assert torch.equal(a[0], b[0]), f"{name} {module_name}: unperturbed row differs"
        # u = 1 on all heads: attention output is v, per head, then the output projections.
        v = attn.to_v(x[1:])
        torch.testing.assert_close(ours[0][1:], attn.to_out[0](v), atol=1e-5, rtol=1e-5)
        if ctx is not None and not attn.context_pre_only:
            torch.testing.assert_close(
                ours[1][1:], attn.to_add_out(attn.add_v_proj(ctx[1:])), atol=1e-5, rtol=1e-5
            )


def test_sd35_qk_norm_is_applied():
    """With qk_norm the unperturbed rows equal diffusers' JointAttnProcessor2_0 exactly, so norms are kept."""
    from guidance.processors import SoftPAGJointAttnProcessor

    transformer = TINY_PIPELINES["sd35"]().transformer
    attn = transformer.transformer_blocks[1].attn
    assert attn.norm_q is not None
    with torch.no_grad():
        attn.norm_q.weight.mul_(3.0)  # make dropping the norm visible
    x, ctx = torch.randn(2, 16, transformer.inner_dim), torch.randn(2, 5, transformer.inner_dim)
    name = "transformer_blocks.1.attn"
    state = PerturbationState(strengths={name: torch.zeros(2, attn.heads)})
    ours = _run(SoftPAGJointAttnProcessor, state, name, attn, x, ctx)
    for a, b in zip(JointAttnProcessor2_0()(attn, x, ctx), ours, strict=True):
        assert torch.equal(a, b)


def test_flux_processors_match_diffusers():
    from guidance.processors import SoftPAGFluxAttnProcessor

    transformer = TINY_PIPELINES["flux"]().transformer
    dim = transformer.inner_dim
    x, ctx = torch.randn(2, 16, dim), torch.randn(2, 5, dim)
    ids = torch.cat(
        [
            torch.zeros(5, 3),
            torch.stack(
                torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
            ).view(16, 3),
        ]
    )
    rope = transformer.pos_embed(ids)
    double, single = transformer.transformer_blocks[0].attn, transformer.single_transformer_blocks[0].attn
    for name, attn, args in (
        ("transformer_blocks.0.attn", double, (x, ctx)),
        ("single_transformer_blocks.0.attn", single, (torch.cat([ctx, x], 1), None)),
    ):
        ref = FluxAttnProcessor()(attn, *args, image_rotary_emb=rope)
        state = PerturbationState(strengths={name: torch.zeros(2, attn.heads)}, text_tokens=5)
        ours = _run(SoftPAGFluxAttnProcessor, state, name, attn, *args, image_rotary_emb=rope)
        ref, ours = (r if isinstance(r, tuple) else (r,) for r in (ref, ours))
        for a, b in zip(ref, ours, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        # u = 1 in image mode: image tokens keep attending to text, text tokens are untouched.
        state.identity, state.strengths[name] = "image", torch.ones(2, attn.heads)
        perturbed = _run(SoftPAGFluxAttnProcessor, state, name, attn, *args, image_rotary_emb=rope)
        perturbed = perturbed if isinstance(perturbed, tuple) else (perturbed,)
        text_out = perturbed[1] if len(perturbed) == 2 else perturbed[0][:, :5]
        text_ref = ref[1] if len(ref) == 2 else ref[0][:, :5]
        torch.testing.assert_close(text_out, text_ref, atol=1e-6, rtol=1e-6)


def test_unet_self_attention_processor():
    from guidance.processors import SoftPAGSelfAttnProcessor

    unet = TINY_PIPELINES["sd15"]().unet
    name = next(k.removesuffix(".processor") for k in unet.attn_processors if "attn1" in k)
    attn = unet.get_submodule(name)
    x = torch.randn(2, 16, attn.to_q.in_features)
    ref = AttnProcessor2_0()(attn, x)
    ours = _run(SoftPAGSelfAttnProcessor, _state(name, 2, attn.heads, 1.0), name, attn, x)
    assert torch.equal(ref[0], ours[0])
    torch.testing.assert_close(ours[1], attn.to_out[0](attn.to_v(x[1])), atol=1e-5, rtol=1e-5)
