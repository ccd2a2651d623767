"""The call scope (guidance.scope): install and restore, named hooks handed the call's state, nested and overlapping
scopes, and UpFusion calls at once on shared components."""

from __future__ import annotations

import copy
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from guidance.config import GuidanceError
from guidance.scope import CallScope, ScopeHook, current, running
from guidance.upfusion import SceneCall, SceneTokenAttnProcessor
from pipelines.upfusion import UpFusionPipeline, build_upfusion


@pytest.fixture(scope="module")
def upfusion() -> UpFusionPipeline:
    pipe = build_upfusion("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _views(n: int = 2, size: int = 16) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _processors(pipe) -> dict[str, object]:
    return {
        f"{m}/{k}": p for m in ("unet", "controlnet") for k, p in getattr(pipe, m).attn_processors.items()
    }


def _render(pipe, seed: int) -> torch.Tensor:
    cameras = [(40 + 30 * seed, 10)]
    return pipe(images=_views(), query_cameras=cameras, num_inference_steps=3, output_type="pt",
                generator=torch.Generator().manual_seed(seed)).images  # fmt: skip


def test_four_upfusion_threads_on_shared_components_equal_one_after_the_other(upfusion):
    """Four pipelines made with from_pipe (shared UNet, ControlNet, UpSRT; own schedulers) called from four threads
    at once give the images of the calls one after the other, and every processor is the original afterwards."""
    before = _processors(upfusion)
    twins = [
        UpFusionPipeline.from_pipe(upfusion, scheduler=copy.deepcopy(upfusion.scheduler)) for _ in range(4)
    ]
    for twin in twins:
        twin.set_progress_bar_config(disable=True)
    alone = [_render(twin, seed) for seed, twin in enumerate(twins)]
    results: list = [None] * 4
    start = threading.Barrier(4)

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = _render(twins[i], i)
        except Exception as error:  # noqa: BLE001 - asserted below in the test's thread
            results[i] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        assert not isinstance(results[i], Exception), results[i]
        assert torch.equal(results[i], alone[i]), f"thread {i}"
    assert len({float(image.sum()) for image in alone}) == 4  # four different images
    after = _processors(upfusion)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not any("_guidance_scope" in vars(m) for m in upfusion.unet.modules())


def test_overlapping_scene_scopes_nest_and_restore_everything(upfusion):
    """Two scene_attention scopes opened in one thread: the inner one's call is current, and whichever closes
    first, the other's call is current again, and after both every processor is the original and no call runs."""
    before = _processors(upfusion)
    first, second = upfusion.scene_call(torch.eye(4)[None]), upfusion.scene_call(2 * torch.eye(4)[None])
    for order in ("nested", "overlapping"):
        a, b = upfusion.scene_attention(first), upfusion.scene_attention(second)
        a.__enter__()
        b.__enter__()
        assert current(SceneCall) is second
        assert any(type(p).__name__ == "SceneTokenAttnProcessor" for p in _processors(upfusion).values())
        if order == "nested":
            b.__exit__(None, None, None)
            assert current(SceneCall) is first
            a.__exit__(None, None, None)
        else:
            a.__exit__(None, None, None)
            assert current(SceneCall) is second
            assert any(type(p).__name__ == "SceneTokenAttnProcessor" for p in _processors(upfusion).values())
            b.__exit__(None, None, None)
        assert current(SceneCall) is None, order
        after = _processors(upfusion)
        assert all(after[k] is before[k] for k in before), order
    with pytest.raises(GuidanceError, match="outside a scene_attention scope"):  # no call left running
        SceneTokenAttnProcessor()(None, torch.zeros(1, 4, 8), torch.zeros(1, 2, 8))


# -- the scope itself on a small attention model ---------------------------------------------------------------


class _Model(torch.nn.Module):
    """Two attention modules behind a linear layer, enough for processors and hooks."""

    def __init__(self):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        self.inp = torch.nn.Linear(8, 8)
        self.attn1 = Attention(8, heads=2, dim_head=4, processor=AttnProcessor2_0())
        self.attn2 = Attention(8, heads=2, dim_head=4, processor=AttnProcessor2_0())

    def forward(self, x):
        return self.attn2(self.attn1(self.inp(x)))


class _State:
    def __init__(self, scale: float):
        self.scale, self.seen = scale, []


class _Scale(ScopeHook):
    serves = _State

    def pre_forward(self, state, module, args, kwargs):
        state.seen.append("pre")
        return (args[0] * state.scale,), kwargs


class _Other:
    """Another technique's state: `_Scale` passes over it."""


def test_hooks_get_the_running_state_and_are_skipped_without_one():
    model, x = _Model(), torch.randn(1, 3, 8)
    plain = model(x)
    state = _State(0.0)
    with CallScope(state, "test").hook(model.inp, "scale", _Scale()) as running_state:
        assert running_state is state
        zero = model(x)
        with running(_Other()):  # another technique's state on top: the hook still finds its own
            assert torch.equal(model(x), zero)
    assert state.seen == ["pre", "pre"]
    assert not torch.equal(zero, plain) and not model.inp._forward_pre_hooks
    with CallScope(_Other(), "test").hook(model.inp, "scale", _Scale()):
        assert torch.equal(model(x), plain)  # no _State running: the hook is skipped


def test_shared_installations_count_scopes_and_the_last_one_restores():
    model = _Model()
    original = model.attn1.processor
    first, second = _State(1.0), _State(2.0)
    mine = AttnProcessor2_0()
    mine.share_key = ("test", "attn1")
    other = AttnProcessor2_0()
    other.share_key = ("test", "attn1")
    a = CallScope(first, "test").processors(model, {"attn1": mine}, ["AttnProcessor2_0"])
    b = CallScope(second, "test").processors(model, {"attn1": other}, ["AttnProcessor2_0"])
    a.hook(model.inp, "scale", _Scale())
    b.hook(model.inp, "scale", _Scale())
    a.open()
    b.open()
    assert model.attn1.processor is mine and len(model.inp._forward_pre_hooks) == 1  # shared, not stacked
    a.close()
    assert model.attn1.processor is mine and len(model.inp._forward_pre_hooks) == 1  # b still runs
    b.close()
    assert model.attn1.processor is original and not model.inp._forward_pre_hooks
    assert "_guidance_scope" not in vars(model.attn1) and current(_State) is None


def test_refused_processor_leaves_nothing_installed_and_a_replaced_one_raises():
    model = _Model()
    originals = (model.attn1.processor, model.attn2.processor)
    model.attn2.set_processor(torch.nn.Identity())  # a processor the technique does not reproduce
    scope = CallScope(_State(1.0), "pag_heads").hook(model.inp, "scale", _Scale())
    scope.processors(model, {"attn1": AttnProcessor2_0(), "attn2": AttnProcessor2_0()}, ["AttnProcessor2_0"])
    with pytest.raises(
        GuidanceError, match="pag_heads: attn2 uses Identity, which would be silently dropped"
    ):
        scope.open()
    assert model.attn1.processor is originals[0] and not model.inp._forward_pre_hooks
    assert current(_State) is None
    model.attn2.set_processor(originals[1])
    mine = AttnProcessor2_0()
    with pytest.raises(
        GuidanceError, match=r"pag_heads: the attention processors of \['attn1'\] were replaced"
    ):
        with CallScope(_State(1.0), "pag_heads").processors(model, {"attn1": mine}, ["AttnProcessor2_0"]):
            model.attn1.set_processor(AttnProcessor2_0())  # e.g. an IP-Adapter loader during the call
    assert model.attn1.processor is originals[0]


def test_a_wrapped_method_is_refused_to_a_second_scope_and_unwrapped_after():
    class Scheduler:
        def step(self, output, t):
            return output + t

    scheduler = Scheduler()
    double = CallScope(_State(2.0), "pag_heads").around(
        scheduler, "step", lambda state, out: out * state.scale
    )
    with double:
        assert scheduler.step(1.0, 1.0) == 3.0
        with pytest.raises(GuidanceError, match="this Scheduler is in use by another running call"):
            CallScope(_State(3.0), "pag_heads").around(scheduler, "step", lambda s, out: out).open()
        assert scheduler.step(1.0, 1.0) == 3.0  # the refused scope changed nothing
    assert "step" not in vars(scheduler) and scheduler.step(1.0, 1.0) == 2.0
