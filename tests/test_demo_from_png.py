"""An image of the demo, made with a preset whose w is not the default, made again bit for bit by
`headhunter generate --from-png` in another working directory (issue 26's round trip, the demo's leg)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from guidance.heads import HeadSelection
from pipelines.cli import main
from pipelines.settings import SOFTPAG_SETTINGS

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
