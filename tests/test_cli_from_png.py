"""`headhunter generate --from-png IMAGE`: an image of the CLI or of a batch job, made with a preset whose w is not
the default, made again from its PNG alone in another working directory, bit for bit; flags given with it replace
the recorded values; a PNG without a usable record is refused naming --from-png."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tools.batch import BOOKKEEPING
from tools.cli import main
from tools.settings import SOFTPAG_SETTINGS

SMALL = ["--steps", "2", "--height", "32", "--width", "32"]
STYLE_W = 1.5  # the preset's own group scale, not the default pag_scale
assert STYLE_W != SOFTPAG_SETTINGS["pag_scale"].default


def _record(png: Path) -> dict:
    return json.loads(Image.open(png).text["headhunter"])


def _pixels(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png))


def _folders(tmp_path: Path, tiny: str) -> tuple[Path, Path]:
    """Two working directories, each with the model at `models/tiny`; the first has the preset file."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        (folder / "models").mkdir(parents=True)
        (folder / "models" / "tiny").symlink_to(tiny, target_is_directory=True)
    (first / "style.json").write_text(json.dumps({"groups": [{"name": "style", "scale": STYLE_W, "heads": [
        {"layer": 1, "head": 0, "strength": 0.5}, {"layer": 2, "head": 1}]}]}))  # fmt: skip
    return first, second


def _moved(png: Path, first: Path, second: Path) -> Path:
    """The PNG copied into the second folder, the first folder (preset, outputs) removed."""
    shutil.copy(png, second / "made.png")
    shutil.rmtree(first)
    return second / "made.png"


def test_a_cli_image_with_a_preset_w_is_made_again_from_its_png_elsewhere(tiny_folder, tmp_path, monkeypatch):
    first, second = _folders(tmp_path, tiny_folder("sd3"))
    monkeypatch.chdir(first)
    assert main(["generate", "a red circle", "--model", "models/tiny", "--pag-heads", "style.json", "--seed", "5",
                 "--out", "made.png", *SMALL]) == 0  # fmt: skip
    made = _moved(first / "made.png", first, second)
    monkeypatch.chdir(second)
    assert main(["generate", "--from-png", "made.png", "--out", "again.png"]) == 0
    assert np.array_equal(_pixels(Path("again.png")), _pixels(made))
    assert _record(Path("again.png")) == _record(
        made
    )  # the same record: model as named, preset name and hash
    assert [g["scale"] for g in _record(made)["pag_groups"]] == [STYLE_W]

    # A flag given with --from-png replaces the recorded value: here every group's w.
    assert main(["generate", "--from-png", "made.png", "--pag-scale", "3", "--out", "w3.png"]) == 0
    assert [g["scale"] for g in _record(Path("w3.png"))["pag_groups"]] == [3.0]
    assert not np.array_equal(_pixels(Path("w3.png")), _pixels(made))


def test_a_batch_image_with_a_preset_w_is_made_again_from_its_png_elsewhere(
    tiny_folder, tmp_path, monkeypatch
):
    first, second = _folders(tmp_path, tiny_folder("sd3"))
    monkeypatch.chdir(first)
    (first / "jobs.jsonl").write_text(
        json.dumps({"id": "styled", "prompt": "a blue square", "pag_heads": "style.json", "seed": 7}) + "\n"
    )
    assert main(["batch", "jobs.jsonl", "--model", "models/tiny", "--out", "out", "--quiet", *SMALL]) == 0
    made = _moved(first / "out" / "styled-0.png", first, second)
    monkeypatch.chdir(second)
    assert main(["generate", "--from-png", "made.png", "--out", "again.png"]) == 0
    assert np.array_equal(_pixels(Path("again.png")), _pixels(made))
    batch_record = {k: v for k, v in _record(made).items() if k not in BOOKKEEPING}
    assert _record(Path("again.png")) == batch_record
    assert batch_record["pag_preset"] == "style" and batch_record["pag_groups"][0]["scale"] == STYLE_W


def test_a_preset_s_recommended_settings_are_recorded_and_made_again(tiny_folder, tmp_path, monkeypatch):
    """A preset that recommends `pag_every` 2 applies it (the call left it at its default): the record says so,
    and the PNG alone makes the image again without the preset."""
    first, second = _folders(tmp_path, tiny_folder("sd3"))
    preset = json.loads((first / "style.json").read_text())
    (first / "style.json").write_text(json.dumps({**preset, "settings": {"pag_every": 2}}))
    monkeypatch.chdir(first)
    assert main(["generate", "a red circle", "--model", "models/tiny", "--pag-heads", "style.json",
                 "--out", "made.png", "--steps", "3", "--height", "32", "--width", "32"]) == 0  # fmt: skip
    made = _moved(first / "made.png", first, second)
    assert _record(made)["pag_every"] == 2
    monkeypatch.chdir(second)
    assert main(["generate", "--from-png", "made.png", "--out", "again.png"]) == 0
    assert np.array_equal(_pixels(Path("again.png")), _pixels(made))


def _png(path: Path, text: dict | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("absent", lambda p: p, "--from-png 'absent.png': no such file"),
        ("no-record", lambda p: _png(p), "--from-png 'no-record.png' holds no headhunter record"),
        ("not-json", lambda p: _png(p, {"headhunter": "{'prompt':"}),
         "--from-png 'not-json.png': its headhunter record is damaged (not valid JSON"),
        ("no-seed", lambda p: _png(p, {"headhunter": json.dumps({"model": "x/y", "prompt": "a"})}),
         "--from-png 'no-seed.png': its headhunter record is damaged (no 'seed')"),
        ("bad-groups", lambda p: _png(p, {"headhunter": json.dumps(
            {"model": "x/y", "prompt": "a", "seed": 0, "guidance": "softpag", "pag_groups": [{"name": "g"}]})}),
         "--from-png 'bad-groups.png': its headhunter record is damaged"),
        ("text", lambda p: p.write_text("not an image") or p, "--from-png 'text.png' cannot be read as an image"),
        ("gone-model", lambda p: _png(p, {"headhunter": json.dumps(
            {"model": "./models/gone", "prompt": "a red circle", "seed": 0})}),
         "--from-png 'gone-model.png' was made with the model './models/gone', which cannot be used here"),
    ],
)  # fmt: skip
def test_a_png_without_a_usable_record_is_refused_naming_from_png(
    tmp_path, monkeypatch, capsys, name, make, message
):
    import tools.cli as cli

    monkeypatch.setattr(cli, "_load", lambda *a: pytest.fail("the model loaded"))
    monkeypatch.chdir(tmp_path)
    make(tmp_path / f"{name}.png")
    assert main(["generate", "--from-png", f"{name}.png", "--out", "x.png"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_generate_needs_a_prompt_or_from_png(capsys):
    assert main(["generate"]) == 2
    assert "give a prompt, or --from-png IMAGE" in capsys.readouterr().err


def test_pag_flags_on_an_unguided_record_are_refused(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["generate", "a red circle", "--model", tiny_folder("sd3"), "--out", "plain.png", *SMALL]) == 0
    )
    capsys.readouterr()
    assert main(["generate", "--from-png", "plain.png", "--pag-scale", "2", "--out", "x.png"]) == 2
    assert "--pag-scale: --from-png's image was made without head guidance; give --pag-heads too" in (
        capsys.readouterr().err
    )


def test_a_structured_image_is_made_again_from_its_png(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompt = ["generate", "a red circle and a blue square", "--model", tiny_folder("sd15"), *SMALL]
    assert main([*prompt, "--structured", "conjunction", "--pag-heads", "L1H0", "--out", "made.png"]) == 0
    assert main(["generate", "--from-png", "made.png", "--out", "again.png"]) == 0
    assert np.array_equal(_pixels(Path("again.png")), _pixels(Path("made.png")))
    assert _record(Path("again.png"))["noun_phrases"] == ["a red circle", "a blue square"]
    # --structured off given with it: the same call without structured cross-attention.
    assert main(["generate", "--from-png", "made.png", "--structured", "off", "--out", "plain.png"]) == 0
    assert "structured" not in _record(Path("plain.png"))
    assert not np.array_equal(_pixels(Path("plain.png")), _pixels(Path("made.png")))
