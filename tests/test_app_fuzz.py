"""Bad inputs through the demo's Gradio API (gradio_client on localhost) and its event functions: each is
refused with a clear message that names the input, before any work (issue #17, Gradio surface)."""

import math

import pytest
from PIL import Image

import app as demo_app

GENERATE = [
    (dict(steps=0), "Steps: 0 is not allowed"),
    (dict(steps=2.5), "Steps: 2.5 is not allowed"),  # refused, not truncated to 2
    (dict(steps="abc"), "Steps: 'abc' is not allowed"),
    (dict(steps=float("nan")), "Steps: nan is not allowed"),
    (dict(steps=-3), "Steps: -3 is not allowed"),
    (dict(steps=10**6), "Steps: 1000000 is not allowed"),
    (dict(width=33), "Width: 33 is not allowed; use a multiple of 4 from 4 to 64"),
    (dict(width=128), "Width: 128 is not allowed"),
    (dict(height=0), "Height: 0 is not allowed"),
    (dict(height="64px"), "Height: '64px' is not allowed"),
    (dict(seed=-2), "Seed: -2 is not allowed"),
    (dict(seed=1.5), "Seed: 1.5 is not allowed"),
    (dict(seed=2**64), "Seed: 18446744073709551616 is not allowed"),
    (dict(guidance_scale=0), "CFG scale: 0 is not allowed"),
    (dict(guidance_scale=float("inf")), "CFG scale: inf is not allowed"),
    (dict(guidance_scale=float("nan")), "CFG scale: nan is not allowed"),
    (dict(guidance_scale="x"), "CFG scale: 'x' is not allowed"),
    (dict(pag_scale=101), "PAG scale w: 101 is not allowed"),
    (dict(pag_scale=True), "PAG scale w: True is not allowed"),
    (dict(pag_strength=1.5), "Strength u: 1.5 is not allowed"),
    (dict(pag_strength=-0.1), "Strength u: -0.1 is not allowed"),
    (dict(pag_identity="both"), "Identity: 'both' is not one of joint, image"),
    (dict(pag_start=0.9, pag_stop=0.5), "Start: 0.9 must be below Stop"),
    (dict(pag_stop=2), "Stop: 2 is not allowed"),
    (dict(preset="../../etc/passwd"), "Preset: '../../etc/passwd' is not one of"),
    (dict(heads="L1X2"), "Heads: cannot read 'L1X2'"),
    (dict(heads="L9H0"), "Heads: entry L9H0: layer 9 is out of range"),
    (dict(heads="L0H99"), "Heads: entry L0H99: head 99 is out of range"),
    (dict(heads="L0H0=2"), "Heads: entry L0H0=2: strength u=2.0"),
    (dict(heads="L0H0, L0H0"), "Heads: duplicate entry L0H0"),
    (dict(heads="L0H0" * 6000), "Heads: give text of at most"),
    (dict(prompt=""), "Prompt: write a prompt"),
    (dict(prompt="   "), "Prompt: write a prompt"),
    (dict(prompt="x" * 3000), "Prompt: give text of at most 2000 characters"),
    (dict(negative_prompt="x" * 3000), "Negative prompt: give text of at most 2000 characters"),
]

SEARCH = [
    (("nope", "a", 1, 2, 1, 2, False), "Objective: 'nope' is not one of"),
    (("saturation", "", 1, 2, 1, 2, False), "Prompts: give 1 to 8 prompts"),
    (("saturation", "a\n" * 9, 1, 2, 1, 2, False), r"Prompts: give 1 to 8 prompts, one per line \(got 9\)"),
    (("saturation", "a", 9, 2, 1, 2, False), "Seeds: 9 is not allowed"),
    (("saturation", "a", 1, 0, 1, 2, False), "k: 0 is not allowed"),
    (("saturation", "a", 1, 2.5, 1, 2, False), "k: 2.5 is not allowed"),
    (("saturation", "a", 1, 2, 0, 2, False), "Rounds: 0 is not allowed"),
    (("saturation", "a", 1, 2, "two", 2, False), "Rounds: 'two' is not allowed"),
    (("saturation", "a", 1, 2, 1, 50, False), "Steps: 50 is not allowed"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), GENERATE, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(GENERATE)]
)
def test_generate_refuses_bad_inputs_by_name(server, client, kwargs, message):
    """Through gradio_client; NaN and infinity (gradio_client cannot send them as JSON; raw HTTP can) go to
    the event function directly."""
    from gradio_client.exceptions import AppError

    prompt = kwargs.pop("prompt", "a red circle")
    if any(isinstance(v, float) and not math.isfinite(v) for v in kwargs.values()):
        with pytest.raises(demo_app.gr.Error, match=message):
            server[1].generate(prompt, **kwargs, progress=lambda *a, **k: None)
        return
    with pytest.raises(AppError, match=message):
        client.predict(prompt, api_name="/generate", **kwargs)


@pytest.mark.parametrize(
    ("args", "message"), SEARCH, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(SEARCH)]
)
def test_search_refuses_bad_inputs_by_name(client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/search")


@pytest.fixture
def views(tmp_path):
    """NovelViews on a folder that claims weights: every check runs before the model would load."""
    (tmp_path / "model_index.json").write_text("{}")
    image = tmp_path / "view.png"
    Image.new("RGB", (16, 16), "red").save(image)
    (tmp_path / "notes.txt").write_text("not an image")
    return demo_app.NovelViews(tmp_path, max_steps=10), str(image), str(tmp_path / "notes.txt")


NOVEL_VIEWS = [
    (dict(files=[]), "Images: upload 1 to 6 images"),
    (dict(files=["{image}"] * 7), r"Images: upload 1 to 6 images of the object \(got 7\)"),
    (dict(files=["{text}"]), "Images: file 1 is not an image"),
    (dict(mode="spin"), "Mode: 'spin' is not one of views, orbit"),
    (dict(cameras="90"), "Cameras: cannot read '90'"),
    (dict(cameras="90, 500"), r"Cameras \(elevation\): 500.0 is not allowed"),
    (dict(cameras=""), "Cameras: give 1 to 12"),
    (dict(steps=0), "Steps: 0 is not allowed"),
    (dict(steps=2.5), "Steps: 2.5 is not allowed"),
    (dict(cfg=float("nan")), "CFG scale: nan is not allowed"),
    (dict(seed=-1), "Seed: -1 is not allowed"),
    (dict(mode="orbit", frames=1), "Frames: 1 is not allowed"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), NOVEL_VIEWS, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(NOVEL_VIEWS)]
)
def test_novel_views_refuse_bad_inputs_by_name(views, kwargs, message):
    tab, image, text_file = views
    call = dict(files=[image], mode="views", cameras="90, 0", frames=12, elevation=15, steps=2, cfg=3, seed=0)
    call.update(kwargs)
    call["files"] = [f.format(image=image, text=text_file) for f in call["files"]]
    with pytest.raises(demo_app.gr.Error, match=message):
        tab.run(**call, progress=lambda *a, **k: None)
    assert tab.pipe is None  # refused before the model loads


def test_the_matrix_has_at_least_30_bad_inputs():
    assert len(GENERATE) + len(SEARCH) + len(NOVEL_VIEWS) >= 30
