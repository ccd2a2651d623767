"""A flag given explicitly wins over a preset's recommended setting, also at the flag's default value: before,
`--pag-stop 1.0` with toy-sd3-fidelity (which recommends pag_stop 0.3) was silently replaced by 0.3, because the
library fills a preset's settings into the arguments left at their defaults and 1.0 is the default."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from guidance.heads import HeadSelection
from tools.cli import main
from tools.settings import ASSETS, PRESETS, explicit_over_preset

MODEL = ASSETS / "toy-sd3"
PRESET = "toy-sd3-fidelity"
pytestmark = pytest.mark.skipif(
    not (MODEL.is_dir() and (PRESETS / f"{PRESET}.json").is_file()),
    reason="the toy SD3 and its preset are absent",
)


def _made(tmp_path, name: str, *flags: str):
    out = tmp_path / f"{name}.png"
    assert main(["generate", "a red circle", "--model", str(MODEL), "--steps", "4", "--seed", "5",
                 "--out", str(out), *flags]) == 0  # fmt: skip
    image = Image.open(out)
    return np.asarray(image.convert("RGB")), json.loads(image.text["headhunter"])


def test_an_explicit_default_beats_the_preset_s_setting_and_is_recorded(tmp_path):
    recommended = HeadSelection.parse(str(PRESETS / f"{PRESET}.json")).metadata["settings"]
    assert recommended["pag_stop"] == 0.3
    filled, filled_record = _made(tmp_path, "filled", "--pag-heads", PRESET)
    explicit, explicit_record = _made(tmp_path, "explicit", "--pag-heads", PRESET, "--pag-stop", "1.0")
    assert filled_record["pag_stop"] == 0.3 and explicit_record["pag_stop"] == 1.0
    assert explicit_record["pag_preset"] == PRESET == filled_record["pag_preset"]
    assert explicit_record["pag_preset_sha256"] == filled_record["pag_preset_sha256"]
    assert np.abs(filled.astype(int) - explicit.astype(int)).max() > 0  # before: the same image
    # the same heads as plain notation, whole window: the explicit call's image
    heads = ",".join(
        f"L{h['layer']}H{h['head']}={h['u']}" for g in explicit_record["pag_groups"] for h in g["heads"]
    )
    scale = explicit_record["pag_groups"][0]["scale"]
    plain, _ = _made(tmp_path, "plain", "--pag-heads", heads, "--pag-scale", str(scale))
    np.testing.assert_array_equal(plain, explicit)
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(tmp_path / "explicit.png"), "--out", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(again).convert("RGB")), explicit)


def test_calls_without_an_explicit_preset_setting_are_left_as_they_are():
    pag = {"pag_heads": PRESET, "pag_stop": 1.0}
    assert explicit_over_preset(pag, set()) == (pag, {})  # the preset fills its 0.3 as before
    assert explicit_over_preset(pag, {"pag_scale"}) == (pag, {})
    notation = {"pag_heads": "L0H1", "pag_stop": 1.0}
    assert explicit_over_preset(notation, {"pag_stop"}) == (notation, {})
    call, kept = explicit_over_preset(pag, {"pag_stop"})
    assert call["pag_stop"] == 1.0 and "settings" not in call["pag_heads"].metadata
    assert kept["pag_preset"] == PRESET


def test_a_batch_job_s_explicit_setting_beats_the_preset_s(tmp_path):
    """The same in batch jobs: a job line giving pag_stop 1.0 with the preset gets 1.0 (and the image the flag
    gives in `generate`); a line leaving it gets the preset's 0.3; both name the preset."""
    jobs = tmp_path / "jobs.jsonl"
    common = {"prompt": "a red circle", "seed": 5, "num_inference_steps": 4, "pag_heads": PRESET}
    jobs.write_text(json.dumps({**common, "id": "filled"}) + "\n" + json.dumps({**common, "id": "explicit",
                                                                                 "pag_stop": 1.0}) + "\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--model", str(MODEL), "--out", str(out), "--quiet"]) == 0
    records = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert records["filled-0"]["pag_stop"] == 0.3 and records["explicit-0"]["pag_stop"] == 1.0
    assert records["filled-0"]["pag_preset"] == records["explicit-0"]["pag_preset"] == PRESET
    generated, _ = _made(tmp_path, "generated", "--pag-heads", PRESET, "--pag-stop", "1.0")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "explicit-0.png").convert("RGB")), generated)
