"""The perturbed batch of one denoiser call: which rows are which, how the inputs grow, how the guidance folds back.

Shapes (B = rows the pipeline passes, C = its cond rows, G = head groups or 1 for per-image selections):
    pipeline inputs  (B, ...)        --expand_rows-->    (B + G*C, ...) = [pipeline rows ; cond copies per group]
    denoiser output  (B + G*C, ...)  --split_guidance--> pure output (B, ...) for the pipeline,
                                                         delta (C, ...) = sum_g w_g (cond - perturbed_g)
    scheduler.step(model_output (C, ...))  <--fold_guidance-- model_output + delta
    pag_every=k: on the steps between two perturbed ones the batch stays (B, ...) and the last delta is folded again.
    pag_branch="uncond": the batch stays (B, ...); `row_strengths` perturbs the pipeline's own uncond rows.
The pipeline's own predictions stay pure: CFG, SD3's skip-layer guidance and `guidance_rescale` see the plain
cond rows, and the PAG term reaches the final prediction at `scheduler.step` (with the rescale applied to the
whole guided prediction, as diffusers' PAG pipelines apply it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg


@dataclass(frozen=True)
class CondRows:
    """Where a pipeline's cond rows sit in a denoiser batch of B rows: with its CFG on, the `half` ("last":
    [uncond, cond]; "first": [cond, uncond]); with CFG off, or `half` None (the uncond prediction is a separate
    denoiser call after the cond one, or there is none), every row."""

    half: str | None = "last"

    def of(self, rows: int, cfg: bool) -> slice:
        """The cond rows among `rows`, `cfg` telling whether the pipeline's CFG is on."""
        if self.half is None or not cfg:
            return slice(0, rows)
        return slice(rows // 2, rows) if self.half == "last" else slice(0, rows // 2)


@dataclass(frozen=True)
class RowLayout:
    """Where the cond rows sit among the pipeline's B rows, and how many perturbed copies follow them."""

    rows: int  # B
    cond: torch.Tensor  # (C,) indices of the cond rows
    groups: int  # G

    @classmethod
    def of(cls, rows: int, cond: slice, groups: int) -> RowLayout:
        """The layout of a batch of `rows` whose cond rows are `cond`, with `groups` perturbed copies."""
        return cls(rows, torch.arange(rows)[cond], groups)

    @property
    def size(self) -> int:
        """C, the number of cond rows (= images of the call)."""
        return len(self.cond)

    @property
    def total(self) -> int:
        """B + G*C, the rows of the expanded batch."""
        return self.rows + self.groups * self.size

    @property
    def index(self) -> torch.Tensor:
        """(B + G*C,) the source row of each expanded row."""
        return torch.cat([torch.arange(self.rows), self.cond.repeat(self.groups)])

    def perturbed(self, group: int) -> slice:
        """The expanded rows of one group's perturbed copies."""
        start = self.rows + group * self.size
        return slice(start, start + self.size)


def expand_rows(value, layout: RowLayout):
    """Every tensor whose first dimension is B and every per-sample list of B items (also inside dicts), as
    (B + G*C, ...); anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == layout.rows:
        return value.index_select(0, layout.index.to(value.device))
    if isinstance(value, list) and len(value) == layout.rows:
        return [value[i] for i in layout.index.tolist()]
    if isinstance(value, dict):
        return {k: expand_rows(v, layout) for k, v in value.items()}
    return value


def strength_table(
    layout: RowLayout,
    group_strengths: Sequence[Mapping[str, torch.Tensor]],
    heads: Mapping[str, int],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """{module: u (B + G*C, heads)}: 0 on the pipeline's rows, each group's strengths on its copies.

    A group's entry is (heads,) for the same heads on every image or (C, heads) for one selection per image."""
    table = {}
    for name, count in heads.items():
        u = torch.zeros(layout.total, count, device=device)
        for g, strengths in enumerate(group_strengths):
            if name in strengths:
                u[layout.perturbed(g)] = strengths[name].to(device)
        table[name] = u
    return table


def row_strengths(
    rows: int,
    perturbed: torch.Tensor,
    strengths: Mapping[str, torch.Tensor],
    heads: Mapping[str, int],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """{module: u (rows, heads)}: the strengths on the `perturbed` rows of an unexpanded batch, 0 elsewhere
    (`pag_branch="uncond"`: the pipeline's own uncond rows are perturbed, no rows are added)."""
    table = {}
    for name, count in heads.items():
        u = torch.zeros(rows, count, device=device)
        if name in strengths:
            u[perturbed.to(device)] = strengths[name].to(device)
        table[name] = u
    return table


def split_guidance(
    output: torch.Tensor, layout: RowLayout, scales: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pure output (B, ...), delta (C, ...) = sum_g w_g (cond - perturbed_g)) from the expanded output."""
    pure = output[: layout.rows]
    cond = pure[layout.cond.to(output.device)]
    delta = torch.zeros_like(cond)
    for g, scale in enumerate(scales):
        delta += scale * (cond - output[layout.perturbed(g)])
    return pure, delta


@dataclass(frozen=True)
class Rescale:
    """diffusers' `guidance_rescale` (Lin et al. 2024, 3.4) as the parent applies it: r and the pure branches."""

    factor: float
    # pure output (B, ...) -> (the parent's CFG combination (C, ...), the cond prediction (C, ...))
    parts: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cfg_parts(pure: torch.Tensor, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the CFG combination, the cond prediction) of a pure [uncond, cond] output: what SD / SDXL rescale."""
    uncond, cond = pure.chunk(2)
    return uncond + guidance_scale * (cond - uncond), cond


def fold_guidance(
    model_output: torch.Tensor, delta: torch.Tensor, pure: torch.Tensor, rescale: Rescale | None
) -> torch.Tensor:
    """The prediction that reaches `scheduler.step`: the parent's plus the PAG term.

    With `guidance_rescale` r > 0 the parent gave R(cfg); diffusers' PAG pipelines give R(cfg + delta), so the
    difference R(cfg + delta) - R(cfg) is added instead of delta."""
    if rescale is None or rescale.factor <= 0:
        return model_output + delta.to(model_output.dtype)
    cfg, cond = rescale.parts(pure)
    with_pag = rescale_noise_cfg(cfg + delta, cond, guidance_rescale=rescale.factor)
    without = rescale_noise_cfg(cfg, cond, guidance_rescale=rescale.factor)
    return model_output + (with_pag - without).to(model_output.dtype)
