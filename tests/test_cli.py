"""The `headhunter` command line on a tiny saved model."""

import json

import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.settings import PRESETS, list_presets


def test_generate_writes_png_with_parameters(tiny_folder, tmp_path):
    out = tmp_path / "img.png"
    args = ["generate", "a red circle", "--model", tiny_folder("sd3"), "--out", str(out), "--steps", "2",
            "--height", "32", "--width", "32", "--pag-heads", "L1H0,L2H1=0.5", "--compare"]  # fmt: skip
    assert main(args) == 0
    image = Image.open(out)
    assert image.size == (32, 32)
    assert image.text["parameters"].startswith("a red circle\n")
    settings = json.loads(image.text["headhunter"])
    assert settings["pag_heads"] == "L1H0,L2H1=0.5" and settings["seed"] == 0
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
    assert Image.open(out / "headmap.png").size == (40 + 4 * 24, 40 + 4 * 24)
    assert "round 1" in (out / "report.md").read_text()
    # The found preset drives generation.
    assert main(["generate", "x", "--model", tiny_folder("sd3"), "--out", str(tmp_path / "g.png"), "--steps", "1",
                 "--height", "32", "--width", "32", "--pag-heads", str(out / "preset.json")]) == 0  # fmt: skip
