"""The `headhunter` command line on a tiny saved model."""

import json
import os

import pytest
from PIL import Image

from tools.cli import main
from tools.settings import PRESETS, list_presets


def test_generate_writes_png_with_parameters(tiny_folder, tmp_path):
    out = tmp_path / "img.png"
    args = ["generate", "a red circle", "--model", tiny_folder("sd3"), "--out", str(out), "--steps", "2",
            "--height", "32", "--width", "32", "--pag-heads", "L1H0,L2H1=0.5", "--compare"]  # fmt: skip
    assert main(args) == 0
    image = Image.open(out)
    assert image.size == (32, 32)
    assert image.text["parameters"].startswith("a red circle\n")
    settings = json.loads(image.text["headhunter"])
    assert settings["pag_heads"] == "L1H0=1, L2H1=0.5" and settings["seed"] == 0  # every u written out
    assert (
        settings["model"] == os.path.relpath(tiny_folder("sd3")) and settings["pag_groups"][0]["scale"] == 3.0
    )
    assert "pag_heads" not in json.loads(Image.open(tmp_path / "img-unguided.png").text["headhunter"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_generate_bad_heads_fails_before_loading(tiny_folder, tmp_path, capsys):
    code = main(
        [
            "generate",
            "x",
            "--model",
            tiny_folder("sd3"),
            "--out",
            str(tmp_path / "a.png"),
            "--pag-heads",
            "L1",
        ]
    )
    assert code == 2
    assert "--pag-heads: cannot read 'L1'" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
    code = main(["generate", "x", "--model", tiny_folder("sd3"), "--out", str(tmp_path / "a.png"),
                 "--pag-heads", "L7H0", "--steps", "1", "--height", "32", "--width", "32"])  # fmt: skip
    assert code == 2 and "layer 7 is out of range" in capsys.readouterr().err


def test_presets_list_and_show(capsys):
    names = [name for name, _ in list_presets()]
    assert "sd3-paper-golden-hour" in names and "flux-paper-glossy" in names
    for name, data in list_presets():
        assert data["format"] == "headhunter-preset", name
    assert main(["presets", "list"]) == 0
    assert "sd3-paper-dark" in capsys.readouterr().out
    assert main(["presets", "show", "sd3-paper-dark"]) == 0
    shown = capsys.readouterr().out
    assert "L1H10" in shown and "stabilityai/stable-diffusion-3-medium-diffusers" in shown
    assert (PRESETS / "sd3-paper-dark.json").is_file()


def test_search_that_finds_no_helpful_head_writes_no_preset(tiny_folder, tmp_path, monkeypatch, capsys):
    from guidance.search import HeadSearch

    def nothing_helps(
        self, k=None, rounds=None, pool=None
    ):  # round 1 tried and, worse than unguided, refused
        record = {"round": 1, "added": ["L0H0"], "tried": [(0, 0)], "score": 0.1, "validation": 0.1,
                  "adopted": False, "why": "not adopted: 0.1 does not beat 0.2", "selected": [], "heads": "",
                  "images": self.images}  # fmt: skip
        self.result = {"selected": [], "heads": "", "round": 0, "history": [record]}
        return [record]

    monkeypatch.setattr(HeadSearch, "greedy", nothing_helps)
    out = tmp_path / "search"
    (out).mkdir()
    (out / "preset.json").write_text("{}")  # from an earlier run into the same folder: stale now
    args = ["search", "--model", tiny_folder("sd3"), "--objective", "saturation", "--prompt", "a red circle",
            "--seeds", "0", "--steps", "1", "--size", "32", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "round 1: +L0H0 -> 0.1000, validation 0.1000 (not adopted: 0.1 does not beat 0.2)" in report
    assert "no preset.json is written" in capsys.readouterr().out and not (out / "preset.json").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], (0.05, None)),  # ours: the relative threshold
        (["--profile", "paper"], (None, 20.0)),  # the paper's absolute PickScore threshold alone
        (["--profile", "paper", "--max-drop", "0.1"], (0.1, 20.0)),  # both when asked for
        (["--profile", "paper", "--guard", "saturation"], (0.05, None)),  # no paper threshold for this guard
    ],
)
def test_search_guard_thresholds_follow_the_profile(tiny_folder, tmp_path, monkeypatch, flags, expected):
    import guidance.objectives as objectives

    seen = []
    real = objectives.get_objective

    class Stop(Exception):
        pass

    def spy(spec, guard=None, max_drop=None, min_score=None, prefix=""):
        if guard is None:
            return real(spec)
        seen.append((max_drop, min_score))
        raise Stop

    monkeypatch.setattr(objectives, "get_objective", spy)
    guard = [] if "--guard" in flags else ["--guard", "pickscore:some/model"]
    args = ["search", "--model", tiny_folder("sd3"), "--objective", "saturation", "--prompt", "p",
            "--out", str(tmp_path / "s"), *guard, *flags]  # fmt: skip
    assert main(args) != 0  # the spy stops the command once the objective is built
    assert seen == [expected]


def test_out_must_be_a_folder_or_png(tiny_folder, capsys):
    assert main(["generate", "x", "--model", tiny_folder("sd3"), "--out", "a.jpg"]) == 2
    assert "--out 'a.jpg' must be a folder or a .png file" in capsys.readouterr().err


def test_search_command_writes_preset_heatmap_report(tiny_folder, tmp_path):
    out = tmp_path / "search"
    args = ["search", "--model", tiny_folder("sd3"), "--objective", "saturation", "--prompt", "a red circle",
            "--seeds", "0", "--k", "2", "--rounds", "1", "--sweep", "--layers", "--steps", "2", "--size", "32",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "preset.json").read_text())
    assert len(data["groups"][0]["heads"]) == 2 and data["groups"][0]["heads"][0]["strength"] == 0.5
    assert len(data["scores"]["head_map"]) == 16 and len(data["scores"]["layers"]) == 4
    from guidance.search import MAP_LEFT, MAP_TOP

    image = Image.open(out / "headmap.png").convert("L")  # 4 x 4 cells of 32 px, the legend to their right
    assert image.width >= MAP_LEFT + 4 * 32 + 150 and image.height >= MAP_TOP + 4 * 32
    assert min(image.crop((8, 24, 300, 40)).getdata()) < 100  # titled with the objective, as the demo's map
    assert "round 1" in (out / "report.md").read_text()
    # The found preset drives generation.
    assert main(["generate", "x", "--model", tiny_folder("sd3"), "--out", str(tmp_path / "g.png"), "--steps", "1",
                 "--height", "32", "--width", "32", "--pag-heads", str(out / "preset.json")]) == 0  # fmt: skip


def _gen(tiny, *extra):
    return [
        "generate",
        "a red circle",
        "--model",
        tiny,
        "--steps",
        "1",
        "--height",
        "32",
        "--width",
        "32",
        *extra,
    ]


def test_generate_never_overwrites_without_asking(tiny_folder, tmp_path, capsys):
    folder = str(tmp_path / "outs")
    assert main(_gen(tiny_folder("sd3"), "--out", folder)) == 0
    assert main(_gen(tiny_folder("sd3"), "--out", folder)) == 0
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == ["image-1.png", "image.png"]
    assert main(_gen(tiny_folder("sd3"), "--out", folder, "--name", "cat")) == 0
    assert main(_gen(tiny_folder("sd3"), "--out", folder, "--name", "cat")) == 2
    assert "'cat.png' exists; pass --overwrite" in capsys.readouterr().err.replace(folder + "/", "")
    before = (tmp_path / "outs" / "cat.png").stat().st_mtime_ns
    assert main(_gen(tiny_folder("sd3"), "--out", folder, "--name", "cat", "--overwrite", "--seed", "3")) == 0
    assert (tmp_path / "outs" / "cat.png").stat().st_mtime_ns != before
    assert json.loads(Image.open(tmp_path / "outs" / "cat.png").text["headhunter"])["seed"] == 3


def test_debug_shows_the_traceback_and_errors_are_one_line(tiny_folder, capsys):
    assert main(_gen(tiny_folder("sd3"), "--steps", "0")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--steps=0 is out of range" in err
    assert main(_gen(tiny_folder("sd3"), "--steps", "0", "--debug")) == 2
    assert "Traceback" in capsys.readouterr().err


def test_relative_model_that_is_not_a_folder_fails_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for value in ("models/toy-sd3", "./toy-sd3", "assets/toy-sd3/"):
        assert main(["generate", "x", "--model", value]) == 2
        assert f"--model {value!r}: no such folder" in capsys.readouterr().err


def test_long_head_lists_are_heads_not_paths(tiny_folder, tmp_path):
    """All 16 heads of the tiny model in three groups: over 250 characters, read as heads (not a file name)."""
    heads = ", ".join(f"L{layer}H{head}=0.5" for layer in range(4) for head in range(4))
    grouped = "; ".join(f"group{i}: {heads}" for i in range(3))
    assert len(grouped) > 250
    assert main(_gen(tiny_folder("sd3"), "--out", str(tmp_path / "a.png"), "--pag-heads", grouped)) == 0
    recorded = json.loads(Image.open(tmp_path / "a.png").text["headhunter"])
    assert [(g["name"], [h["u"] for h in g["heads"]]) for g in recorded["pag_groups"]] == [
        (f"group{i}", [0.5] * 16) for i in range(3)
    ]


def test_presets_list_is_an_aligned_table_without_cut_words(capsys):
    from tools.cli import _presets_list

    assert _presets_list(width=80) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "heads", "layers", "x", "heads", "model"]
    rows = [line for line in lines[1:] if not line.startswith("    ")]
    assert len(rows) == len(list_presets())
    column = lines[0].index("model")
    assert all(row[column - 2 : column] == "  " for row in rows)  # aligned
    sources = " ".join(line.strip() for line in lines[1:] if line.startswith("    "))
    assert "Fine-Grained Perturbation Guidance via Attention Head Selection" in sources  # wrapped whole words
    assert all(len(line) <= 80 for line in lines if line.startswith("    "))


def test_presets_show_is_a_table(capsys):
    assert main(["presets", "show", "sd3-paper-golden-hour"]) == 0
    out = capsys.readouterr().out
    assert "layers x heads  24 x 24" in out and "source" in out
    header = next(line for line in out.splitlines() if line.startswith("group"))
    assert header.split() == ["group", "head", "u", "scale", "w"]
    assert sum(line.split()[1].startswith("L") for line in out.splitlines() if line.startswith("golden")) == 3


def test_device_cuda_without_cuda_is_refused_before_loading(tiny_folder, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(_gen(tiny_folder("sd3"), "--device", "cuda")) == 2
    assert "--device 'cuda': cuda is not available on this machine" in capsys.readouterr().err


# -- views (UpFusion) ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upfusion_folder(tmp_path_factory):
    from pipelines.upfusion import build_upfusion

    folder = tmp_path_factory.mktemp("upfusion") / "tiny"
    build_upfusion("tiny", seed=0).save_pretrained(folder)
    return str(folder)


def _view_file(tmp_path, name="view.png", size=32, mode="RGB"):
    from PIL import Image

    path = tmp_path / name
    Image.new(mode, (size, size), "red").save(path)
    return str(path)


def test_views_writes_one_png_per_camera_and_an_orbit_gif(upfusion_folder, tmp_path, capsys):
    image = _view_file(tmp_path)
    out = tmp_path / "out"
    base = ["views", image, image, "--model", upfusion_folder, "--steps", "2", "--out", str(out)]
    assert main([*base, "--azimuth", "0", "90", "--elevation", "10"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["view-az0-el10.png", "view-az90-el10.png"]
    assert main([*base, "--orbit", "3", "--upsrt-only"]) == 0
    assert (out / "orbit.gif").is_file() and len(list(out.glob("orbit-*.png"))) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--orbit", "0"], "--orbit=0 is out of range; allowed: an integer in [1, 360]"),
        (["--azimuth", "0", "90", "--elevation", "1", "2", "3"], "--elevation has 3 values for 2 azimuths"),
        (["--azimuth", "nan"], "--azimuth=nan must be a finite number in [-360, 360]"),
        (["--orbit", "4", "--azimuth", "10"], "give --azimuth or --orbit, not both"),
        (["--steps", "0"], "--steps=0"),
    ],
)
def test_views_bad_flags_fail_before_loading(upfusion_folder, tmp_path, capsys, extra, message):
    image = _view_file(tmp_path)
    out = tmp_path / "out"
    code = main(["views", image, "--model", upfusion_folder, "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_views_bad_images_are_named(tmp_path, capsys):
    good, small = _view_file(tmp_path), _view_file(tmp_path, "small.png", size=16)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for images, message in (
        ([good] * 7, "give 1 to 6 images; got 7"),
        ([str(text)], "cannot be read as an image"),
        ([good, small], "the images must have one size"),
        ([str(tmp_path / "missing.png")], "no such file"),
    ):
        assert main(["views", *images, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
