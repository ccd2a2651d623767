"""Bad inputs through the demo's Gradio API (gradio_client on localhost) and its event functions: each is
refused with a clear message that names the input, before any work (issue #17, Gradio surface)."""

import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app as demo_app
from guidance.heads import short_repr

GENERATE = [
    (dict(steps=0), r"Steps=0 is out of range; allowed: an integer in \[1, 4\]"),
    (dict(steps=2.5), r"Steps=2\.5 must be an integer in \[1, 4\]"),  # refused, not truncated to 2
    (dict(steps="abc"), r"Steps='abc' must be an integer in \[1, 4\]"),
    (dict(steps=float("nan")), r"Steps=nan must be an integer in \[1, 4\]"),
    (dict(steps=-3), r"Steps=-3 is out of range; allowed: an integer in \[1, 4\]"),
    (dict(steps=10**6), r"Steps=1000000 is out of range; allowed: an integer in \[1, 4\]"),
    (dict(width=33), "Width: 33 is not allowed; use a multiple of 4 from 4 to 64"),
    (dict(width=128), "Width: 128 is not allowed"),
    (dict(height=0), "Height: 0 is not allowed"),
    (dict(height="64px"), "Height: '64px' is not allowed"),
    (dict(seed=-2), r"Seed=-2 is out of range; allowed: an integer in \[-1, 9223372036854775807\]"),
    (dict(seed=1.5), r"Seed=1\.5 must be an integer in \[-1, 9223372036854775807\]"),
    (
        dict(seed=2**64),
        r"Seed=18446744073709551616 is out of range; allowed: an integer in \[-1, 9223372036854775807\]",
    ),
    (dict(guidance_scale=0), r"CFG scale=0 is out of range; allowed: a finite number in \[1, 30\]"),
    (dict(guidance_scale=float("inf")), r"CFG scale=inf must be a finite number in \[1, 30\]"),
    (dict(guidance_scale=float("nan")), r"CFG scale=nan must be a finite number in \[1, 30\]"),
    (dict(guidance_scale="x"), r"CFG scale='x' must be a finite number in \[1, 30\]"),
    (dict(pag_scale=101), r"PAG scale w=101 is out of range; allowed: a finite number in \[-100, 100\]"),
    (dict(pag_scale=True), r"PAG scale w=True must be a finite number in \[-100, 100\]"),
    (dict(pag_strength=1.5), r"Strength u=1\.5 is out of range; allowed: a finite number in \[0, 1\]"),
    (dict(pag_strength=-0.1), r"Strength u=-0\.1 is out of range; allowed: a finite number in \[0, 1\]"),
    (dict(pag_identity="both"), "Identity='both' is not supported; allowed: 'joint' or 'image'"),
    (dict(pag_start=0.9, pag_stop=0.5), "Start=0.9 must be below Stop=0.5"),
    (dict(pag_stop=2), r"Stop=2 is out of range; allowed: a finite number in \[0, 1\]"),
    (dict(preset="../../etc/passwd"), r"Preset='\.\./\.\./etc/passwd' is not supported; allowed: 'custom'"),
    (dict(heads="L1X2"), "Heads: cannot read 'L1X2'"),
    (dict(heads="L9H0"), "Heads: entry L9H0: layer 9 is out of range"),
    (dict(heads="L0H99"), "Heads: entry L0H99: head 99 is out of range"),
    (dict(heads="L0H0=2"), "Heads: entry L0H0=2: strength u=2.0"),
    (dict(heads="L0H0, L0H0"), "Heads: duplicate entry L0H0"),
    (dict(heads="L0H0" * 6000), "Heads has 24000 characters; allowed: at most 20000"),
    (dict(prompt=""), "Prompt='' is empty; allowed: a non-blank string"),
    (dict(prompt="   "), "Prompt='   ' is empty; allowed: a non-blank string"),
    (dict(prompt="x" * 3000), "Prompt has 3000 characters; allowed: at most 2000"),
    (dict(negative_prompt="x" * 3000), "Negative prompt has 3000 characters; allowed: at most 2000"),
]

SEARCH = [
    (
        ("nope", "a", 1, 2, 1, 2, False),
        "Objective='nope' is not supported; allowed: 'toy-quality' or 'toy-fidelity' or 'toy-dark' or",
    ),
    (("saturation", "", 1, 2, 1, 2, False), "Prompts: give 1 to 8 prompts"),
    (("saturation", "a\n" * 9, 1, 2, 1, 2, False), r"Prompts: give 1 to 8 prompts, one per line \(got 9\)"),
    (("saturation", "a", 9, 2, 1, 2, False), r"Seeds=9 is out of range; allowed: an integer in \[1, 4\]"),
    (("saturation", "a", 1, 0, 1, 2, False), r"k=0 is out of range; allowed: an integer in \[1, 8\]"),
    (("saturation", "a", 1, 2.5, 1, 2, False), r"k=2\.5 must be an integer in \[1, 8\]"),
    (("saturation", "a", 1, 2, 0, 2, False), r"Rounds=0 is out of range; allowed: an integer in \[1, 5\]"),
    (("saturation", "a", 1, 2, "two", 2, False), r"Rounds='two' must be an integer in \[1, 5\]"),
    (("saturation", "a", 1, 2, 1, 50, False), r"Steps=50 is out of range; allowed: an integer in \[1, 4\]"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), GENERATE, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(GENERATE)]
)
def test_generate_refuses_bad_inputs_by_name(server, client, kwargs, message):
    """Through gradio_client; NaN and infinity (gradio_client cannot send them as JSON; raw HTTP can) go to
    the event function directly."""
    from gradio_client.exceptions import AppError

    kwargs = dict(kwargs)  # the table is the matrix's too
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
    (dict(mode="spin"), "Mode='spin' is not supported; allowed: 'views' or 'orbit'"),
    (dict(cameras="90"), "Cameras: cannot read '90'"),
    (
        dict(cameras="90, 500"),
        r"Cameras \(elevation\)=500\.0 is out of range; allowed: a finite number in \[-90, 90\]",
    ),
    (dict(cameras=""), "Cameras: give 1 to 12"),
    (dict(steps=0), r"Steps=0 is out of range; allowed: an integer in \[1, 10\]"),
    (dict(steps=2.5), r"Steps=2\.5 must be an integer in \[1, 10\]"),
    (dict(cfg=float("nan")), r"CFG scale=nan must be a finite number in \[1, 50\]"),
    (dict(seed=-1), r"Seed=-1 is out of range; allowed: an integer in \[0, 9223372036854775807\]"),
    (dict(mode="orbit", frames=1), r"Frames=1 is out of range; allowed: an integer in \[2, 36\]"),
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
    assert len(demo_cases()) >= 70  # the demo HTTP API row of benchmarks/reliability_matrix.py


# -- The HTTP API as any client can post it (issue 27): every input of every event, bad types, bad files ------
#
# Sent as a browser sends them (POST /gradio_api/queue/join by event number, then the event stream), so values
# gradio_client would change first reach the server as they are: lists, dicts, null, NaN, 10**400, paths and URLs
# that were never uploaded. Each is refused with a message naming the input; none gives {"error": null}.

GENERATE_INPUTS = tuple(inspect.signature(demo_app.Demo.generate).parameters)[1:17]  # self, then 16 inputs
GOOD_GENERATE = dict(prompt="a red circle", seed=0, steps=1, width=32, height=32, guidance_scale=5)
GOOD_SEARCH = ("saturation", "a red circle", 1, 1, 1, 1, False, "ours", "none")
GOOD_VIEWS = ([{"path": "{image}", "meta": {"_type": "gradio.FileData"}}], "views", "90, 0", 12, 15, 2, 3, 0)
HUGE = 10**400  # beyond a float: math.isfinite raised OverflowError
FILE = {"meta": {"_type": "gradio.FileData"}}  # an upload record's shape, with "path" added


def generate_data(**changes) -> list:
    """/generate's 17 payloads (the 16 inputs, then the gallery's state) with `changes` by parameter name."""
    parameters = inspect.signature(demo_app.Demo.generate).parameters
    values = {name: parameters[name].default for name in GENERATE_INPUTS}
    values.update(GOOD_GENERATE, negative_prompt="", preset="custom", heads="")
    values.update(changes)
    return [values[name] for name in GENERATE_INPUTS] + [None]


def search_data(i: int, value) -> list:
    data = list(GOOD_SEARCH)
    data[i] = value
    return data


def structured_data(i: int, value) -> list:
    data = ["a red circle and a blue square", "conjunction", 0, 1]
    data[i] = value
    return data


def views_data(i: int, value) -> list:
    data = list(GOOD_VIEWS)
    data[i] = value
    return data


def file(path: str) -> dict:
    return {"path": path, **FILE}


# (case, event, payloads (strings "{name}" are replaced by the uploaded files of `uploads`), message)
API_CASES = [
    ("prompt list", "generate", generate_data(prompt=["a red circle"]), r"Prompt: \['a red circle'\] is not text"),
    ("prompt dict", "generate", generate_data(prompt={"text": "a"}), r"Prompt: \{'text': 'a'\} is not text"),
    ("prompt number", "generate", generate_data(prompt=5), "Prompt=5 must be a string, not int"),
    ("prompt bool", "generate", generate_data(prompt=True), "Prompt=True must be a string, not bool"),
    ("prompt upload record", "generate", generate_data(prompt=file("/etc/passwd")), "Prompt: .* is not text"),
    ("prompt null", "generate", generate_data(prompt=None), "Prompt='' is empty; allowed: a non-blank string"),
    ("prompt NUL", "generate", generate_data(prompt="a\x00b"), r"Prompt='a\\x00b' contains the control character '\\x00'; allowed: printable text"),
    ("prompt ESC", "generate", generate_data(prompt="a\x1b[31mb"), r"Prompt='a\\x1b\[31mb' contains the control character '\\x1b'; allowed: printable text"),
    ("prompt surrogate", "generate", generate_data(prompt="a\udcffb"), r"Prompt='a\\udcffb' is not valid Unicode text \(undecodable bytes\?\)"),
    ("negative list", "generate", generate_data(negative_prompt=["x"]), "Negative prompt: .* is not text"),
    ("negative NUL", "generate", generate_data(negative_prompt="\x00"), r"Negative prompt='\\x00' contains the control character '\\x00'; allowed: printable text"),
    ("seed null", "generate", generate_data(seed=None), "Seed: None is not a number"),
    ("seed string", "generate", generate_data(seed="1"), r"Seed='1' must be an integer in \[-1, 9223372036854775807\]"),
    ("seed bool", "generate", generate_data(seed=True), r"Seed=True must be an integer in \[-1, 9223372036854775807\]"),
    ("seed 10**400", "generate", generate_data(seed=HUGE), "Seed=1000.* is out of range; allowed: an"),
    ("seed list", "generate", generate_data(seed=[1]), r"Seed: \[1\] is not a number"),
    ("steps null", "generate", generate_data(steps=None), "Steps: None is not a number"),
    ("steps dict", "generate", generate_data(steps={"value": 2}), "Steps: .* is not a number"),
    ("steps upload record", "generate", generate_data(steps=file("/etc/passwd")), "Steps: .* is not a number"),
    ("steps 10**400", "generate", generate_data(steps=HUGE), "Steps=1000.* is out of range; allowed: an"),
    ("steps NaN", "generate", generate_data(steps=float("nan")), r"Steps=nan must be an integer in \[1, 4\]"),
    ("steps string", "generate", generate_data(steps="1"), r"Steps='1' must be an integer in \[1, 4\]"),
    ("width null", "generate", generate_data(width=None), "Width: None is not a number"),
    ("width 10**400", "generate", generate_data(width=HUGE), "Width: 1000.* is not allowed"),
    ("height bool", "generate", generate_data(height=True), "Height: True is not allowed"),
    ("height list", "generate", generate_data(height=[32]), "Height: .* is not a number"),
    ("cfg null", "generate", generate_data(guidance_scale=None), "CFG scale: None is not a number"),
    ("cfg 10**400", "generate", generate_data(guidance_scale=HUGE), "CFG scale=1000.* is out of range; allowed: a"),
    ("cfg -inf", "generate", generate_data(guidance_scale=-math.inf), r"CFG scale=-inf must be a finite number in \[1, 30\]"),
    ("w dict", "generate", generate_data(pag_scale={}), r"PAG scale w: \{\} is not a number"),
    ("w string", "generate", generate_data(pag_scale="3"), r"PAG scale w='3' must be a finite number in \[-100, 100\]"),
    ("u list", "generate", generate_data(pag_strength=[0.5]), r"Strength u: \[0.5\] is not a number"),
    ("u 10**400", "generate", generate_data(pag_strength=HUGE), "Strength u=1000.* is out of range; allowed: a"),
    ("identity null", "generate", generate_data(pag_identity=None), "Identity: None is not one of"),
    ("identity number", "generate", generate_data(pag_identity=5), "Identity=5 is not supported; allowed: 'joint' or 'image'"),
    ("identity list", "generate", generate_data(pag_identity=["joint"]), "Identity: .* is not one of"),
    ("start string", "generate", generate_data(pag_start="0"), r"Start='0' must be a finite number in \[0, 1\]"),
    ("stop dict", "generate", generate_data(pag_stop={"a": 1}), "Stop: .* is not a number"),
    ("every 1.5", "generate", generate_data(pag_every=1.5), r"Every k steps=1\.5 must be an integer in \[1, 1000\]"),
    ("every bool", "generate", generate_data(pag_every=True), r"Every k steps=True must be an integer in \[1, 1000\]"),
    ("branch number", "generate", generate_data(pag_branch=1), "Perturbed branch=1 is not supported; allowed: 'cond' or 'uncond'"),
    ("preset null", "generate", generate_data(preset=None), "Preset: None is not one of"),
    ("preset list", "generate", generate_data(preset=["custom"]), "Preset: .* is not one of"),
    ("heads list", "generate", generate_data(heads=["L0H0"]), r"Heads: \['L0H0'\] is not text"),
    ("heads number", "generate", generate_data(heads=5), "Heads=5 must be a string, not int"),
    ("heads NUL", "generate", generate_data(heads="L0H0\x00"), r"Heads='L0H0\\x00' contains the control character '\\x00'; allowed: printable text"),
    ("too few inputs", "generate", generate_data()[:3], "/generate: give 17 inputs"),
    ("objective null", "search", search_data(0, None), "Objective: None is not one of"),
    ("objective number", "search", search_data(0, 5), "Objective=5 is not supported; allowed: 'toy-quality' or 'toy-fidelity' or 'toy-dark' or"),
    ("prompts list", "search", search_data(1, ["a"]), r"Prompts: \['a'\] is not text"),
    ("prompts number", "search", search_data(1, 7), "Prompts=7 must be a string, not int"),
    ("prompts NUL", "search", search_data(1, "a\x00"), r"Prompts='a\\x00' contains the control character '\\x00'; allowed: printable text"),
    ("seeds null", "search", search_data(2, None), "Seeds: None is not a number"),
    ("seeds 10**400", "search", search_data(2, HUGE), "Seeds=1000.* is out of range; allowed: an"),
    ("k string", "search", search_data(3, "2"), r"k='2' must be an integer in \[1, 8\]"),
    ("rounds bool", "search", search_data(4, True), r"Rounds=True must be an integer in \[1, 5\]"),
    ("search steps NaN", "search", search_data(5, float("nan")), r"Steps=nan must be an integer in \[1, 4\]"),
    ("search steps list", "search", search_data(5, [1]), "Steps: .* is not a number"),
    ("head map string", "search", search_data(6, "yes"), "Head map: 'yes' must be true or false"),
    ("head map null", "search", search_data(6, None), "Head map: None must be true or false"),
    ("head map 1", "search", search_data(6, 1), "Head map: 1 must be true or false"),
    ("profile unknown", "search", search_data(7, "fast"), "Profile='fast' is not supported; allowed: 'ours' or 'paper'"),
    ("profile null", "search", search_data(7, None), "Profile: None is not one of"),
    ("guard unknown", "search", search_data(8, "beauty"), "Guard='beauty' is not supported; allowed: 'none' or 'toy-quality' or 'toy-fidelity' or 'toy-dark'"),
    ("guard the objective", "search", search_data(8, "saturation"), "Guard: 'saturation' is the objective itself"),
    ("too few search inputs", "search", list(GOOD_SEARCH)[:7], "/search: give 9 inputs"),
    ("structured prompt list", "structured", structured_data(0, ["a"]), r"Prompt: \['a'\] is not text"),
    ("structured prompt blank", "structured", structured_data(0, " "), "Prompt=' ' is empty; allowed: a non-blank string"),
    ("structured prompt NUL", "structured", structured_data(0, "a\x00"), r"Prompt='a\\x00' contains the control character '\\x00'; allowed: printable text"),
    ("structured mode unknown", "structured", structured_data(1, "spin"), "Mode='spin' is not supported; allowed: 'conjunction' or 'key-value' or 'off'"),
    ("structured mode null", "structured", structured_data(1, None), "Mode: None is not one of conjunction, key-value, off"),
    ("structured mode None as text", "structured", structured_data(1, "None"), "Mode='None' is not supported; allowed: 'conjunction' or 'key-value' or 'off'"),
    ("structured seed string", "structured", structured_data(2, "1"), r"Seed='1' must be an integer in \[-1, 9223372036854775807\]"),
    ("structured seed -2", "structured", structured_data(2, -2), r"Seed=-2 is out of range; allowed: an integer in \[-1, 9223372036854775807\]"),
    ("structured steps 0", "structured", structured_data(3, 0), r"Steps=0 is out of range; allowed: an integer in \[1, 4\]"),
    ("structured steps 10**400", "structured", structured_data(3, HUGE), "Steps=1000.* is out of range; allowed: an"),
    ("too few structured inputs", "structured", structured_data(0, "a")[:2], "/structured: give 4 inputs"),
    ("toy object unknown", "pick", ["nope"], r"Toy object='nope' is not supported; allowed: 'object-1: 2 cubes \+ cylinder \+ cone' or 'object-2:"),
    ("toy object null", "pick", [None], r"Toy object: None is not one of \(your own images\)"),
    ("images: a path never uploaded", "novel_views", views_data(0, [file("{outside}")]), "Images: file 1 .* was not uploaded to this demo"),
    ("images: /etc/passwd", "novel_views", views_data(0, [file("/etc/passwd")]), "Images: file 1 .* was not uploaded to this demo"),
    ("images: a bare path", "novel_views", views_data(0, ["/etc/passwd"]), "Images: file 1 .* is not an uploaded file"),
    ("images: a URL", "novel_views", views_data(0, [file("http://127.0.0.1:9/x.png")]), "Images: file 1 is a URL"),
    ("images: a file: URL", "novel_views", views_data(0, [file("file:///etc/passwd")]), "Images: file 1 is a URL"),
    ("images: the upload folder", "novel_views", views_data(0, [file("{folder}")]), r"Images: file 1 .* is not an uploaded file \(a folder"),
    ("images: a link in the upload folder", "novel_views", views_data(0, [file("{link}")]), "Images: file 1 .* (was not uploaded|is not an uploaded file)"),
    ("images: one record, not a list", "novel_views", views_data(0, file("{image}")), "Images: .* is not a list of uploaded files"),
    ("images: a number", "novel_views", views_data(0, 5), "Images: 5 is not a list of uploaded files"),
    ("images: a record without meta", "novel_views", views_data(0, [{"path": "{image}"}]), "Images: .* is not an uploaded file record"),
    ("images: path not a string", "novel_views", views_data(0, [{"path": 5, **FILE}]), "Images: file 1 .* is not an uploaded file"),
    ("images: a text file", "novel_views", views_data(0, [file("{text}")]), "Images: file 1 is not an image this demo can read"),
    ("images: a truncated PNG", "novel_views", views_data(0, [file("{truncated}")]), "Images: file 1 is not an image this demo can read"),
    ("images: a PNG without its end", "novel_views", views_data(0, [file("{cut}")]), "Images: file 1 is not an image this demo can read"),
    ("images: 5000x5000", "novel_views", views_data(0, [file("{huge}")]), r"Images: image 1 is 5000x5000 px; allowed: at most 4096"),
    ("images: none", "novel_views", views_data(0, []), "Images: upload 1 to 6 images"),
    ("images: null", "novel_views", views_data(0, None), "Images: upload 1 to 6 images"),
    ("mode null", "novel_views", views_data(1, None), "Mode: None is not one of views, orbit"),
    ("cameras list", "novel_views", views_data(2, [90, 0]), r"Cameras: \[90, 0\] is not text"),
    ("cameras NUL", "novel_views", views_data(2, "90, 0\x00"), r"Cameras='90, 0\\x00' contains the control character '\\x00'; allowed: printable text"),
    ("frames null", "novel_views", views_data(3, None), "Frames: None is not a number"),
    ("elevation dict", "novel_views", views_data(4, {}), "Elevation: .* is not a number"),
    ("views steps 10**400", "novel_views", views_data(5, HUGE), "Steps=1000.* is out of range; allowed: an"),
    ("views cfg string", "novel_views", views_data(6, "3"), r"CFG scale='3' must be a finite number in \[1, 50\]"),
    ("views seed bool", "novel_views", views_data(7, True), r"Seed=True must be an integer in \[0, 9223372036854775807\]"),
    ("preset file never uploaded", "read_preset_file", [file("/etc/passwd")], "Preset file: file 1 .* was not uploaded"),
    ("preset file a URL", "read_preset_file", [file("https://example.com/p.json")], "Preset file: file 1 is a URL"),
    ("preset file a bare path", "read_preset_file", ["/etc/passwd"], "Preset file: file 1 .* is not an uploaded file"),
    ("preset file a list", "read_preset_file", [[file("{preset}")]], "Preset file: file 1 .* is not an uploaded file"),
    ("preset file not JSON", "read_preset_file", [file("{text.txt}")], r"Preset file: file 1 \(.text.txt.\) is not a .json file"),
    ("preset file not a preset", "read_preset_file", [file("{preset}")], "Preset file: .*"),
    ("preset menu number", "choose_preset", [5], "Preset=5 is not supported; allowed: 'custom'"),
    ("preset menu dict", "choose_preset", [{}], r"Preset: \{\} is not one of"),
    ("example 999", "load_example", [999], r"Prompts this model understands: 999 is not an example number"),
    ("example string", "load_example", ["0"], r"Prompts this model understands: '0' is not an example number"),
    ("example -1", "load_example", [-1], r"Prompts this model understands: -1 is not an example number"),
    ("reuse without a pick", "reuse", [None, None], "Gallery: click an image in the gallery first"),
]  # fmt: skip


def api_call(url: str, event: str, data: list, timeout: float = 60) -> tuple[str, str | None]:
    """One event over HTTP as a browser posts it: ("error", message), ("ok", output) or ("http", status)."""
    import json
    import uuid

    import httpx

    ids = {
        d.get("api_name"): d["id"] for d in httpx.get(url + "config", timeout=timeout).json()["dependencies"]
    }
    session = uuid.uuid4().hex
    body = json.dumps({"data": data, "fn_index": ids[event], "session_hash": session, "trigger_id": None})
    joined = httpx.post(
        url + "gradio_api/queue/join",
        content=body,
        headers={"content-type": "application/json"},
        timeout=timeout,
    )
    if joined.status_code != 200:
        return "http", f"{joined.status_code} {joined.text[:200]}"
    stream = httpx.stream(
        "GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=timeout
    )
    with stream as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                output = message.get("output") or {}
                return ("ok", str(output)[:200]) if message.get("success") else ("error", output.get("error"))
            if message.get("msg") == "unexpected_error":
                return "error", message.get("message")
    return "http", "the event stream ended without a result"


def upload_files(url: str, tmp: Path) -> dict[str, str]:
    """Files uploaded to the server at `url` (name -> path in its upload folder), a path outside it (in `tmp`),
    the upload folder and a link inside it to /etc/passwd (a client cannot make one: the worst case)."""
    import io
    import uuid

    import httpx

    image, noisy, huge = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(image, format="PNG")
    Image.effect_noise((64, 64), 50).save(noisy, format="PNG")
    Image.new("1", (5000, 5000)).save(huge, format="PNG")
    contents = {
        "image": ("image.png", image.getvalue()),
        "huge": ("huge.png", huge.getvalue()),
        "cut": ("cut.png", image.getvalue()[:-12]),  # no IEND chunk: PIL decodes it without complaint
        "truncated": ("truncated.png", noisy.getvalue()[: len(noisy.getvalue()) // 2]),
        "text": ("text.png", b"not an image"),
        "preset": ("preset.json", b'{"groups": 5}'),
        "text.txt": ("text.txt", b"hello"),
    }
    files = [("files", named) for named in contents.values()]
    paths = httpx.post(url + "gradio_api/upload", files=files, timeout=60).json()
    uploaded = dict(zip(contents, paths, strict=True))
    (tmp / "outside.png").write_bytes(contents["image"][1])
    link = Path(uploaded["image"]).parent / f"link-{uuid.uuid4().hex}.png"
    link.symlink_to("/etc/passwd")
    return {**uploaded, "outside": str(tmp / "outside.png"), "folder": str(link.parent), "link": str(link)}


@pytest.fixture(scope="module")
def uploads(server, tmp_path_factory):
    """`upload_files` once per module; the link is removed afterwards."""
    files = upload_files(server[0], tmp_path_factory.mktemp("api-files"))
    yield files
    Path(files["link"]).unlink()


def filled(data, files: dict):
    """`data` with every "{name}" string replaced by that uploaded file's path."""
    if isinstance(data, str) and data.startswith("{") and data.endswith("}") and data[1:-1] in files:
        return files[data[1:-1]]
    if isinstance(data, list):
        return [filled(item, files) for item in data]
    if isinstance(data, dict):
        return {key: filled(value, files) for key, value in data.items()}
    return data


def classify_api(url: str, event: str, data: list, message: str, files: dict) -> tuple[str, str]:
    """(outcome, message) of one bad payload over HTTP: clear (an error matching `message`, which names the
    input, no traceback), unclear (an error without a message or another one), silently accepted (a result),
    crash (an HTTP error or no result)."""
    outcome, text = api_call(url, event, filled(data, files))
    if outcome == "ok":
        return "silently accepted", text
    if outcome != "error":
        return "crash", text
    if not text or not re.match(message, text) or "Traceback" in text:
        return "unclear", str(text)
    return "clear", text


@pytest.mark.parametrize(("case", "event", "data", "message"), API_CASES, ids=[c[0] for c in API_CASES])
def test_the_http_api_refuses_every_bad_input_by_name(server, uploads, case, event, data, message):
    """Before: a list prompt generated "['a red circle']", 13 of these gave {"error": null}, 5000x5000 was "not
    an image", NUL was "at most 2000 characters", 10**400 steps an OverflowError."""
    outcome, text = classify_api(server[0], event, data, message, uploads)
    assert outcome == "clear", f"{case}: {outcome}: {text}"


def demo_cases() -> list[tuple[str, str, list, str]]:
    """Every HTTP case for the reliability matrix: `API_CASES`, then `GENERATE` and `SEARCH` as a browser posts
    them (NaN and infinity too, which gradio_client cannot send)."""
    generate = [
        (f"generate {' '.join(f'{k}={short_repr(v)}' for k, v in kwargs.items())}", "generate",
         generate_data(**kwargs), message)
        for kwargs, message in GENERATE
    ]  # fmt: skip
    search = [(f"search {short_repr(args)}", "search", list(args), message) for args, message in SEARCH]
    return [*API_CASES, *generate, *search]


def test_a_list_prompt_through_gradio_client_is_refused(client):
    """The probe's finding, as gradio_client sends it."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"Prompt: \['a red circle'\] is not text"):
        client.predict(["a red circle"], api_name="/generate", steps=1)


def test_a_search_and_a_generation_at_the_same_time_both_finish(server):
    """The search runs entirely inside a generation's step (its scheduler held): before, the search shared the
    pipeline and was refused ("its scheduler is in use by a call running in another thread")."""
    import threading

    demo = server[1]
    searched: list = []

    def search() -> None:
        searched.extend(demo.search("saturation", "a red circle", 1, 1, 1, 1, False, progress=None))

    def during_the_first_step(*args, **kwargs) -> None:
        if not searched:
            worker = threading.Thread(target=search)
            worker.start()
            worker.join(timeout=120)

    call = dict(seed=3, steps=2, heads="L0H0")
    together, *_ = demo.generate("a red circle", **call, progress=during_the_first_step)
    assert searched and "Unguided saturation" in searched[-1][1]
    alone, *_ = demo.generate("a red circle", **call, progress=lambda *a, **k: None)
    for image, same in zip(together, alone, strict=True):  # guided and unguided: each call its own image
        assert np.array_equal(np.asarray(image), np.asarray(same))


def test_the_search_pipeline_shares_the_components_and_the_progress_bar_setting(server):
    demo = server[1]
    assert demo.search_pipe.scheduler is not demo.pipe.scheduler
    assert demo.search_pipe.transformer is demo.pipe.transformer
    assert demo.search_pipe._progress_bar_config == {"disable": True}
