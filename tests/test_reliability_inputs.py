"""Non-values, bounds and outputs (issue 27): booleans only from booleans, no NaN or infinity in tensors, bounded
camera counts, structured options that would do nothing, and `headhunter views` files.

Four case tables, each with a classifier returning one of `OUTCOMES` (as tests/test_fuzz.py), so
`benchmarks/reliability_matrix.py` counts the same rows: SoftPAG calls (the tiny SD3), structured calls (the tiny
SD1.5), UpFusion calls (the tiny UpFusion model) and `headhunter views` command lines. A structured prompt without a
noun phrase is not refused: it runs and warns (`clear` when the warning names the prompt).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from guidance.config import MAX_QUERY_CAMERAS

OUTCOMES = ("clear", "unclear", "silently accepted", "crash")
NAN, INF = math.nan, math.inf


@dataclass(frozen=True)
class Case:
    """One input: a name, the call's keyword arguments (or a function of the good tensors giving them), the words
    a clear error (or warning) holds; `files` are written into the output folder first (views)."""

    name: str
    given: object
    expect: str
    files: dict = field(default_factory=dict)


def _with(key: str, fill: float) -> Callable[[dict], dict]:
    """The good tensors of a call with `key` filled by `fill` at one element."""

    def given(good: dict) -> dict:
        bad = good[key].clone()
        bad.view(-1)[0] = fill
        keep = {
            "prompt_embeds",
            "pooled_prompt_embeds",
            "negative_prompt_embeds",
            "negative_pooled_prompt_embeds",
        }
        extra = {k: good[k] for k in keep} if key in keep else {}
        return {**extra, key: bad}

    return given


def _flags(name: str, values: list) -> list[Case]:
    return [Case(f"{name}={v!r}"[:40], {name: v}, name) for v in values]


# -------------------------------------------------------------------------------------------------------------
# SoftPAG pipelines (the tiny SD3): SoftPAGMixin.__call__ checks tensors and flags by name
# -------------------------------------------------------------------------------------------------------------

SOFTPAG_CASES = [
    Case("latents nan", _with("latents", NAN), "latents contains NaN"),
    Case("latents inf", _with("latents", INF), "latents contains NaN"),
    Case("latents -inf, no heads", lambda g: {**_with("latents", -INF)(g), "pag_heads": None}, "latents"),
    Case("prompt_embeds nan", _with("prompt_embeds", NAN), "prompt_embeds contains NaN"),
    Case("negative_prompt_embeds inf", _with("negative_prompt_embeds", INF), "negative_prompt_embeds"),
    Case("pooled_prompt_embeds nan", _with("pooled_prompt_embeds", NAN), "pooled_prompt_embeds contains"),
    Case("negative_pooled nan", _with("negative_pooled_prompt_embeds", NAN), "negative_pooled_prompt_embeds"),
    Case("sigmas with nan", {"sigmas": [1.0, NAN]}, "sigmas[1] contains NaN"),
    *_flags("return_dict", ["no", None, 0, 1.0]),
]


def _good_sd3(pipe) -> dict:
    """Finite tensors of the right shapes for the tiny SD3 at 32 px."""
    embeds = pipe.encode_prompt("a red circle", None, None, do_classifier_free_guidance=True)
    names = (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    )
    channels = pipe.transformer.config.in_channels
    return {**dict(zip(names, embeds, strict=True)), "latents": torch.zeros(1, channels, 4, 4)}


def classify_softpag(pipe, case: Case, tmp: Path) -> tuple[str, str]:
    """(outcome, message) of one tiny SD3 call (pag_heads L1H1 unless the case says otherwise)."""
    kwargs = case.given(_good_sd3(pipe)) if callable(case.given) else dict(case.given)
    call = {"num_inference_steps": 1, "height": 32, "width": 32, "pag_heads": "L1H1", **kwargs}
    if "prompt_embeds" not in kwargs:
        call["prompt"] = "a red circle"
    return _classify_call(lambda: pipe(**call), [pipe.transformer], case.expect)


# -------------------------------------------------------------------------------------------------------------
# Structured cross-attention (the tiny SD1.5)
# -------------------------------------------------------------------------------------------------------------

STRUCTURED_CASES = [
    Case("structured_layers=[]", {"structured_layers": []}, "structured_layers=[] chooses no layer"),
    Case("structured_layers=()", {"structured_layers": ()}, "structured_layers=[] chooses no layer"),
    Case("noun_phrases=['']", {"noun_phrases": [""]}, "noun_phrases[0]='' is empty"),
    Case("noun_phrases=['  ']", {"noun_phrases": ["  "]}, "noun_phrases[0]='  ' is empty"),
    Case(
        "noun_phrases=[['red circle'], []]",
        {"prompt": ["a red circle", "a blue square"], "noun_phrases": [["red circle"], []]},
        "noun_phrases[1]=[] gives that prompt no phrase",
    ),
    Case("noun_phrases=[['']]", {"noun_phrases": [[""]]}, "noun_phrases[0][0]='' is empty"),
    Case("noun_phrases=[3]", {"noun_phrases": [3]}, "noun_phrases[0]=3"),
    Case("latents nan, structured", lambda g: {"latents": g["latents"] * NAN}, "latents contains NaN"),
    Case(
        "conjunction latents inf",
        lambda g: {"structured": "conjunction", "latents": g["latents"] / 0},
        "latents",
    ),
    Case("no noun phrase: warned", {"prompt": "running fast"}, "'running fast'"),
    Case("whole prompt only: warned", {"noun_phrases": ["a red circle"]}, "'a red circle'"),
]


def classify_structured(pipe, case: Case, tmp: Path) -> tuple[str, str]:
    """(outcome, message) of one tiny SD1.5 structured call; a run that warns naming the words is clear."""
    good = {"latents": torch.ones(1, pipe.unet.config.in_channels, 4, 4)}
    kwargs = case.given(good) if callable(case.given) else dict(case.given)
    call = {"prompt": "a red circle", "structured": "key-value", "num_inference_steps": 1, "height": 32,
            "width": 32, **kwargs}  # fmt: skip
    return _classify_call(lambda: pipe(**call), [pipe.unet], case.expect)


# -------------------------------------------------------------------------------------------------------------
# UpFusion (the tiny model): flags, camera counts, non-finite cameras, orbit settings
# -------------------------------------------------------------------------------------------------------------

TOO_MANY = MAX_QUERY_CAMERAS + 1
BAD_MATRIX = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, NAN], [0, 0, 0, 1]]

UPFUSION_CASES = [
    *_flags("upsrt_only", ["no", "False", None, 1, 0, torch.tensor(True)]),
    *_flags("scene_attention", [None, "yes", 0, 1.0]),
    *_flags("cfg_query_rays", ["no", 1, 0.0]),
    *_flags("return_dict", ["no", None, 0]),
    Case(
        "2000 camera pairs",
        {"query_cameras": [(k * 0.18, 0) for k in range(2000)]},
        f"1 to {MAX_QUERY_CAMERAS}",
    ),
    Case(
        f"{TOO_MANY} camera pairs",
        {"query_cameras": [(k, 0) for k in range(TOO_MANY)]},
        "query_cameras holds",
    ),
    Case(
        f"({TOO_MANY}, 4, 4) tensor", {"query_cameras": torch.eye(4).repeat(TOO_MANY, 1, 1)}, "query_cameras"
    ),
    Case(
        "(2000, 4, 4) array", {"query_cameras": np.tile(np.eye(4), (2000, 1, 1))}, "query_cameras holds 2000"
    ),
    Case(f"{TOO_MANY} matrices as a list", {"query_cameras": [np.eye(4)] * TOO_MANY}, "query_cameras holds"),
    Case("(0, 4, 4) array", {"query_cameras": np.zeros((0, 4, 4))}, "query_cameras holds no camera"),
    Case(
        "azimuth nan", {"query_cameras": [(NAN, 0)]}, "query_cameras[0] azimuth=nan must be a finite number"
    ),
    Case(
        "elevation inf",
        {"query_cameras": [(10, 0), (0, INF)]},
        "query_cameras[1] elevation=inf must be a finite",
    ),
    Case("numpy azimuth nan", {"query_cameras": [(np.float32(NAN), 0)]}, "query_cameras[0]"),
    Case("matrix list nan", {"query_cameras": BAD_MATRIX}, "query_cameras contains NaN"),
    Case(
        "matrix in list nan",
        {"query_cameras": [np.eye(4), np.array(BAD_MATRIX)]},
        "query_cameras[1] contains",
    ),
    Case(
        "tensor inf", {"query_cameras": torch.eye(4)[None] / torch.tensor(0.0)}, "query_cameras contains NaN"
    ),
    Case("orbit frames 361", {"orbit": {"frames": TOO_MANY}}, "frames=361 is out of range"),
    Case("orbit frames True", {"orbit": {"frames": True}}, "frames=True"),
    Case("orbit elevation nan", {"orbit": {"elevation": NAN}}, "elevation=nan"),
    Case("orbit elevation 91", {"orbit": {"elevation": 91}}, "elevation=91"),
    Case("orbit frame_ms 0", {"orbit": {"frame_ms": 0}}, "frame_ms=0"),
    Case("orbit upsrt_only 'no'", {"orbit": {"upsrt_only": "no"}}, "upsrt_only='no'"),
]


def input_views(n: int = 2, size: int = 16) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def classify_upfusion(pipe, case: Case, tmp: Path) -> tuple[str, str]:
    """(outcome, message) of one tiny UpFusion call, or of `orbit` (its GIF in `tmp`)."""
    from pipelines.upfusion import orbit

    given = dict(case.given)
    if "orbit" in given:
        settings = {"frames": 2, "num_inference_steps": 1, "upsrt_only": True, **given["orbit"]}
        run = lambda: orbit(pipe, input_views(), gif_path=str(tmp / "orbit.gif"), **settings)  # noqa: E731
    else:
        call = {"images": input_views(), "query_cameras": [(40, 10)], "num_inference_steps": 1, **given}
        run = lambda: pipe(**call)  # noqa: E731
    outcome, message = _classify_call(run, [pipe.unet, pipe.controlnet], case.expect)
    if outcome == "clear" and any(tmp.iterdir()):
        outcome, message = "crash", "a file was written: " + message
    return outcome, message


def _classify_call(run: Callable, models: list, expect: str) -> tuple[str, str]:
    """clear: a ValueError holding `expect` (or a run that warns holding it), processors restored."""
    before = [dict(m.attn_processors) for m in models]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run()
            said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
            warned = [m for m in said if expect in m and "unstructured" in m]
            outcome, message = ("clear", warned[0]) if warned else ("silently accepted", "")
        except ValueError as error:
            message = str(error)
            outcome = "clear" if expect in message and "Traceback" not in message else "unclear"
        except Exception as error:  # noqa: BLE001 (that is the finding)
            outcome, message = "crash", f"{type(error).__name__}: {error}"
    for model, processors in zip(models, before, strict=True):
        if any(model.attn_processors[name] is not p for name, p in processors.items()):
            outcome, message = "crash", "processors not restored: " + message
    return outcome, message


# -------------------------------------------------------------------------------------------------------------
# `headhunter views`: files that exist, cameras that are one, counts; {model} a tiny UpFusion folder
# -------------------------------------------------------------------------------------------------------------


def _views(*args: str) -> list[str]:
    return ["views", "{image}", "--model", "{model}", "--out", "{out}", "--steps", "1", "--upsrt-only", *args]


VIEWS_CASES = [
    Case(
        "--azimuth 90 90", _views("--azimuth", "90", "90"), "view 1 (azimuth 90.0, elevation 0.0) and view 2"
    ),
    Case(
        "--azimuth 1.0000001 1.0000002", _views("--azimuth", "1.0000001", "1.0000002"), "are the same camera"
    ),
    Case("--azimuth 0 360", _views("--azimuth", "0", "360"), "view 1 (azimuth 0.0"),
    Case("--azimuth -90 270", _views("--azimuth", "-90", "270"), "are the same camera"),
    Case("--azimuth 10 10 --elevation 5", _views("--azimuth", "10", "10", "--elevation", "5"), "same camera"),
    Case(
        "--azimuth 5 5 --elevation 1 2 3",
        _views("--azimuth", "5", "7", "5", "--elevation", "1", "2", "1.0000001"),
        "view 1 (azimuth 5.0, elevation 1.0) and view 3",
    ),
    Case(
        "2000 azimuths", _views("--azimuth", *[f"{k * 0.18:.2f}" for k in range(2000)]), "--azimuth has 2000"
    ),
    Case(
        f"{TOO_MANY} azimuths", _views("--azimuth", *[str(k) for k in range(TOO_MANY)]), "at most 360 views"
    ),
    Case(
        "--orbit 361",
        _views("--orbit", str(TOO_MANY)),
        "--orbit=361 is out of range; allowed: an integer in [1, 360]",
    ),
    Case("--orbit 2000", _views("--orbit", "2000"), "--orbit=2000 is out of range"),
    Case(
        "--orbit-elevation nan", _views("--orbit", "3", "--orbit-elevation", "nan"), "--orbit-elevation=nan"
    ),
    Case(
        "--orbit-elevation 100", _views("--orbit", "3", "--orbit-elevation", "100"), "--orbit-elevation=100"
    ),
    Case("view exists", _views("--azimuth", "90"), "exists; pass --overwrite", {"view-az90-el0.png": "mine"}),
    Case(
        "second view exists",
        _views("--azimuth", "0", "90", "180"),
        "view-az90-el0.png' exists (and 1 more of the 3 files)",
        {"view-az90-el0.png": "mine", "view-az180-el0.png": "mine"},
    ),
    Case("orbit.gif exists", _views("--orbit", "2"), "orbit.gif' exists", {"orbit.gif": "mine"}),
    Case("orbit frame exists", _views("--orbit", "3"), "orbit-002.png' exists", {"orbit-002.png": "mine"}),
    Case("view is a folder", _views("--azimuth", "0"), "is a folder", {"view-az0-el0.png/keep": "mine"}),
    Case(
        "view is a dangling link",
        _views("--azimuth", "0"),
        "view-az0-el0.png' exists",
        {"view-az0-el0.png": None},
    ),
]


def classify_views(case: Case, model: str, tmp: Path) -> tuple[str, str]:
    """(outcome, stderr) of `main(argv)`: clear = exit 2, one `headhunter` line with the words, files unchanged."""
    from tools.cli import main

    image, out = tmp / "input.png", tmp / "out"
    PIL.Image.new("RGB", (32, 32), "red").save(image)
    for name, content in case.files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.symlink_to(tmp / "nowhere.png")
        else:
            path.write_text(content)
    before = _snapshot(tmp)
    argv = [
        a.replace("{model}", model).replace("{out}", str(out)).replace("{image}", str(image))
        for a in case.given
    ]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except BaseException as error:  # noqa: BLE001 (SystemExit or worse: the finding)
            return "crash", f"{type(error).__name__}: {error}"
    text = stderr.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("headhunter")]
    if code == 0:
        return "silently accepted", text
    if "Traceback" in text or code not in (1, 2) or _snapshot(tmp) != before:
        return "crash", text
    return ("clear" if code == 2 and len(lines) == 1 and case.expect in lines[0] else "unclear"), text


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: a file's bytes, a link's target, or 'dir'."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            entries[key] = "-> " + str(path.readlink())
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = path.read_bytes().hex()
    return entries


# -------------------------------------------------------------------------------------------------------------
# Fixtures and the tests
# -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd3():
    from fixtures.tiny import TINY_PIPELINES
    from pipelines.headhunter import HeadHunterPipeline

    pipe = HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd15():
    from fixtures.tiny import TINY_PIPELINES
    from pipelines.headhunter import StructuredDiffusionPipeline

    pipe = StructuredDiffusionPipeline.from_pipe(TINY_PIPELINES["sd15"]())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def upfusion():
    from pipelines.upfusion import build_upfusion

    pipe = build_upfusion("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def upfusion_folder(tmp_path_factory, upfusion):
    folder = tmp_path_factory.mktemp("upfusion") / "tiny"
    upfusion.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("case", SOFTPAG_CASES, ids=lambda c: c.name)
def test_softpag_tensors_and_flags(sd3, case, tmp_path):
    outcome, message = classify_softpag(sd3, case, tmp_path)
    assert outcome == "clear", message


@pytest.mark.parametrize("case", STRUCTURED_CASES, ids=lambda c: c.name)
def test_structured_options_that_would_do_nothing(sd15, case, tmp_path):
    outcome, message = classify_structured(sd15, case, tmp_path)
    assert outcome == "clear", message


@pytest.mark.parametrize("case", UPFUSION_CASES, ids=lambda c: c.name)
def test_upfusion_flags_counts_and_cameras(upfusion, case, tmp_path):
    outcome, message = classify_upfusion(upfusion, case, tmp_path)
    assert outcome == "clear", message


@pytest.mark.parametrize("case", VIEWS_CASES, ids=lambda c: c.name)
def test_views_outputs_and_cameras(upfusion_folder, case, tmp_path):
    outcome, stderr = classify_views(case, upfusion_folder, tmp_path)
    assert outcome == "clear", stderr


def test_finite_inputs_and_numpy_bools_still_run(sd3, upfusion):
    """The checks refuse only non-values: finite tensors, a numpy bool and return_dict=False run as before."""
    good = _good_sd3(sd3)
    call = {"num_inference_steps": 1, "height": 32, "width": 32, "output_type": "np"}
    given = sd3(**good, **call, generator=torch.Generator().manual_seed(0)).images
    plain = sd3(**{k: v for k, v in good.items() if k != "latents"}, latents=good["latents"], **call,
                generator=torch.Generator().manual_seed(0), return_dict=False)[0]  # fmt: skip
    np.testing.assert_array_equal(given, plain)
    args = {"images": input_views(), "query_cameras": [(40, 10)], "output_type": "pt"}
    with_numpy = upfusion(**args, upsrt_only=np.bool_(True)).images
    torch.testing.assert_close(with_numpy, upfusion(**args, upsrt_only=True).images, atol=0, rtol=0)


def test_views_overwrite_replaces_files_and_links_without_writing_through(
    upfusion, upfusion_folder, tmp_path
):
    """--overwrite replaces a view, and a link at a view's name is replaced, never written through; no temporary
    files are left."""
    from tools.cli import main

    image, out, elsewhere = tmp_path / "input.png", tmp_path / "out", tmp_path / "elsewhere.png"
    PIL.Image.new("RGB", (32, 32), "red").save(image)
    out.mkdir()
    elsewhere.write_text("not yours")
    (out / "view-az0-el0.png").write_text("old")
    (out / "view-az90-el0.png").symlink_to(elsewhere)
    argv = ["views", str(image), "--model", upfusion_folder, "--out", str(out), "--steps", "1", "--upsrt-only",
            "--azimuth", "0", "90", "--overwrite"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    assert elsewhere.read_text() == "not yours"
    for name in ("view-az0-el0.png", "view-az90-el0.png"):
        path = out / name
        assert not path.is_symlink()
        with PIL.Image.open(path) as png:
            side = upfusion.upsrt.config.image_size
            assert png.size == (side, side) and "upfusion" in png.text["headhunter"]
    assert sorted(p.name for p in out.iterdir()) == ["view-az0-el0.png", "view-az90-el0.png"]


def test_orbit_gif_replaces_a_link_instead_of_writing_through_it(upfusion, tmp_path):
    from pipelines.upfusion import orbit

    elsewhere, gif = tmp_path / "elsewhere.gif", tmp_path / "orbit.gif"
    elsewhere.write_text("not yours")
    gif.symlink_to(elsewhere)
    orbit(upfusion, input_views(), frames=2, gif_path=str(gif), num_inference_steps=1, upsrt_only=True)
    assert elsewhere.read_text() == "not yours" and not gif.is_symlink()
    with PIL.Image.open(gif) as opened:
        assert opened.n_frames == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.gif", "orbit.gif"]


def test_the_limit_is_one_constant():
    """The pipeline, orbit and the CLI take their bounds from `MAX_QUERY_CAMERAS` (guidance.config)."""
    from guidance.config import UPFUSION_SETTINGS
    from tools import cli

    assert UPFUSION_SETTINGS["frames"].high == MAX_QUERY_CAMERAS == cli.FRAMES.high
    assert f"1 to {MAX_QUERY_CAMERAS}" in (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
