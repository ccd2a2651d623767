"""An image of the demo, made with a preset whose w is not the default, made again bit for bit by
`headhunter generate --from-png` in another working directory (issue 26's round trip, the demo's leg)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from guidance.heads import HeadSelection
from tools.cli import main
from tools.settings import SOFTPAG_SETTINGS

STYLE_W = 1.5
assert STYLE_W != SOFTPAG_SETTINGS["pag_scale"].default


def _path(file) -> Path:
    return Path(file["path"] if isinstance(file, dict) else file)


def test_a_demo_image_with_a_preset_w_is_made_again_from_its_png_elsewhere(
    server, client, tmp_path, monkeypatch
):
    _, demo = server
    preset = {"groups": [{"name": "style", "scale": STYLE_W,
                          "heads": [{"layer": 0, "head": 1, "strength": 0.25}, {"layer": 1, "head": 0}]}]}  # fmt: skip
    demo.presets["round-trip"] = HeadSelection.parse(preset)
    heads, w = demo.preset_inputs("round-trip")
    try:
        *_, files, _, _ = client.predict(
            "a red circle",
            seed=4,
            steps=2,
            pag_scale=w,
            preset="round-trip",
            heads=heads,
            api_name="/generate",
        )
    finally:
        del demo.presets["round-trip"]
    made = _path(files[0])
    record = json.loads(Image.open(made).text["headhunter"])
    assert [g["scale"] for g in record["pag_groups"]] == [STYLE_W]

    # Another working directory that has the model under the name the demo recorded, and nothing else.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = Path(demo.model)
    (elsewhere / record["model"]).symlink_to(model.resolve(), target_is_directory=True)
    shutil.copy(made, elsewhere / "made.png")
    monkeypatch.chdir(elsewhere)
    assert main(["generate", "--from-png", "made.png", "--out", "again.png"]) == 0
    assert np.array_equal(np.asarray(Image.open("again.png")), np.asarray(Image.open("made.png")))


def test_a_preset_s_recommended_settings_apply_in_the_demo_and_are_recorded(
    server, client, tmp_path, monkeypatch
):
    """As in the CLI and batch: a preset's settings fill the inputs left at their defaults; explicit ones win."""
    _, demo = server
    preset = {"settings": {"pag_stop": 0.5}, "groups": [{"name": "g", "heads": ["L0H1", "L1H0"]}]}
    demo.presets["with-settings"] = HeadSelection.parse(preset)
    heads, w = demo.preset_inputs("with-settings")
    try:
        filled = client.predict("a red circle", seed=2, steps=2, pag_scale=w, preset="with-settings", heads=heads,
                                api_name="/generate")[2]  # fmt: skip
        explicit = client.predict("a red circle", seed=2, steps=2, pag_scale=w, pag_stop=0.8,
                                  preset="with-settings", heads=heads, api_name="/generate")[2]  # fmt: skip
    finally:
        del demo.presets["with-settings"]
    record = json.loads(Image.open(_path(filled[0])).text["headhunter"])
    assert (record["pag_preset"], record["pag_stop"]) == ("with-settings", 0.5)
    assert json.loads(Image.open(_path(explicit[0])).text["headhunter"])["pag_stop"] == 0.8
    # made again from the record alone: the window that applied is the recorded one
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / record["model"]).symlink_to(Path(demo.model).resolve(), target_is_directory=True)
    shutil.copy(_path(filled[0]), elsewhere / "made.png")
    monkeypatch.chdir(elsewhere)
    assert main(["generate", "--from-png", "made.png", "--out", "again.png"]) == 0
    assert np.array_equal(np.asarray(Image.open("again.png")), np.asarray(Image.open("made.png")))


def test_picking_a_preset_shows_its_recommended_head_settings(server):
    """The inputs show what applies: a preset's recommended stop (and the defaults for the rest) go into the head
    settings when it is picked; custom leaves them as they are."""
    import gradio as gr

    _, demo = server
    demo.presets["with-settings"] = HeadSelection.parse(
        {"settings": {"pag_stop": 0.5, "pag_every": 2}, "groups": [{"name": "g", "heads": ["L0H1"]}]}
    )
    try:
        heads, w, *settings = demo.choose_preset("with-settings")
    finally:
        del demo.presets["with-settings"]
    defaults = {k: SOFTPAG_SETTINGS[k].default for k in ("pag_identity", "pag_start", "pag_branch")}
    assert settings == [defaults["pag_identity"], defaults["pag_start"], 0.5, 2, defaults["pag_branch"]]
    assert heads == "g: L0H1=1"
    custom = demo.choose_preset("custom")
    assert custom[:2] == ("", SOFTPAG_SETTINGS["pag_scale"].default)
    assert all(isinstance(value, type(gr.skip())) for value in custom[2:]) and len(custom) == 7
