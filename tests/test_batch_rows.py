"""guidance/batch_rows.py on its own: the row layout of a perturbed batch, how inputs grow, the strength tables, the
split of the expanded output and the fold at `scheduler.step`, each against hand-written expectations."""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from guidance.batch_rows import (
    Rescale,
    RowLayout,
    expand_rows,
    fold_guidance,
    row_strengths,
    split_guidance,
    strength_table,
)


def test_the_layout_of_cfg_rows_with_two_groups():
    layout = RowLayout.of(rows=4, cond=slice(2, 4), groups=2)  # [uncond0, uncond1, cond0, cond1]
    assert layout.size == 2 and layout.total == 8
    assert layout.index.tolist() == [0, 1, 2, 3, 2, 3, 2, 3]
    assert layout.perturbed(0) == slice(4, 6) and layout.perturbed(1) == slice(6, 8)


def test_the_layout_without_cfg_and_with_flux_style_cond_first():
    assert RowLayout.of(rows=3, cond=slice(None), groups=1).index.tolist() == [0, 1, 2, 0, 1, 2]
    first = RowLayout.of(rows=4, cond=slice(0, 2), groups=1)  # cond rows first
    assert first.index.tolist() == [0, 1, 2, 3, 0, 1] and first.perturbed(0) == slice(4, 6)


def test_expand_rows_grows_batch_sized_tensors_and_nested_dicts_only():
    layout = RowLayout.of(rows=2, cond=slice(1, 2), groups=2)
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert expand_rows(x, layout).tolist() == [[1, 1], [2, 2], [2, 2], [2, 2]]
    nested = expand_rows({"text_embeds": x, "time_ids": x[:, :1], "other": 5}, layout)
    assert nested["text_embeds"].shape == (4, 2) and nested["time_ids"][:, 0].tolist() == [1, 2, 2, 2]
    assert nested["other"] == 5
    ids = torch.zeros(7, 3)  # not batch-sized (FLUX's position ids): unchanged, the same object
    assert expand_rows(ids, layout) is ids
    scalar = torch.tensor(3.0)
    assert expand_rows(scalar, layout) is scalar


def test_strength_table_puts_each_groups_strengths_on_its_copies_only():
    layout = RowLayout.of(rows=4, cond=slice(2, 4), groups=2)
    groups = [
        {"a": torch.tensor([0.5, 0.0])},
        {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([1.0, 1.0, 1.0])},
    ]
    table = strength_table(layout, groups, {"a": 2, "b": 3}, torch.device("cpu"))
    assert table["a"].tolist() == [[0, 0]] * 4 + [[0.5, 0]] * 2 + [[0, 1]] * 2
    assert table["b"].tolist() == [[0, 0, 0]] * 6 + [[1, 1, 1]] * 2


def test_strength_table_takes_one_selection_per_image():
    layout = RowLayout.of(rows=4, cond=slice(2, 4), groups=1)
    per_image = [{"a": torch.tensor([[1.0, 0.0], [0.0, 0.25]])}]  # (C, heads)
    table = strength_table(layout, per_image, {"a": 2}, torch.device("cpu"))
    assert table["a"][4:].tolist() == [[1, 0], [0, 0.25]] and not table["a"][:4].any()


def test_row_strengths_perturb_the_given_rows_of_an_unexpanded_batch():
    table = row_strengths(4, torch.tensor([0, 1]), {"a": torch.tensor([0.5, 1.0])}, {"a": 2, "b": 1},
                          torch.device("cpu"))  # fmt: skip
    assert table["a"].tolist() == [[0.5, 1], [0.5, 1], [0, 0], [0, 0]] and not table["b"].any()


def test_split_guidance_returns_the_pure_rows_and_the_weighted_differences():
    layout = RowLayout.of(rows=4, cond=slice(2, 4), groups=2)
    output = torch.arange(8.0).view(8, 1) ** 2  # rows 0..7 with distinct values
    pure, delta = split_guidance(output, layout, [2.0, 0.5])
    assert torch.equal(pure, output[:4])
    cond = output[2:4]
    expected = 2.0 * (cond - output[4:6]) + 0.5 * (cond - output[6:8])
    torch.testing.assert_close(delta, expected, rtol=0, atol=0)


def test_fold_guidance_adds_delta_without_rescale_and_in_the_outputs_dtype():
    model_output = torch.ones(2, 3, dtype=torch.float16)
    delta = torch.full((2, 3), 0.25)
    folded = fold_guidance(model_output, delta, torch.zeros(4, 3), None)
    assert folded.dtype == torch.float16 and torch.equal(
        folded, torch.full((2, 3), 1.25, dtype=torch.float16)
    )
    assert torch.equal(fold_guidance(model_output, delta, torch.zeros(4, 3), Rescale(0.0, None)), folded)


def test_fold_guidance_with_rescale_equals_rescaling_the_guided_prediction():
    """diffusers' PAG pipelines rescale cfg + delta: the fold must give R(cfg + delta) from R(cfg)."""
    torch.manual_seed(0)
    uncond, cond, delta = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    pure = torch.cat([uncond, cond])
    w, r = 5.0, 0.7

    def parts(p):
        return p[:1] + w * (p[1:] - p[:1]), p[1:]

    cfg = parts(pure)[0]
    parent = rescale_noise_cfg(cfg, cond, guidance_rescale=r)  # what the parent hands to scheduler.step
    folded = fold_guidance(parent, delta, pure, Rescale(r, parts))
    torch.testing.assert_close(
        folded, rescale_noise_cfg(cfg + delta, cond, guidance_rescale=r), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("groups", [1, 3])
def test_expand_then_split_round_trips_an_identity_denoiser(groups):
    """A denoiser that ignores the perturbation gives perturbed rows equal to the cond rows: delta is 0."""
    layout = RowLayout.of(rows=4, cond=slice(2, 4), groups=groups)
    x = torch.randn(4, 5)
    pure, delta = split_guidance(expand_rows(x, layout), layout, [1.0] * groups)
    assert torch.equal(pure, x) and not delta.any()
