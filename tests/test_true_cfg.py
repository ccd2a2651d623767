"""The front ends' one CFG scale reaches models whose CFG is `true_cfg_scale` (Qwen-Image, the toy FLUX: no guidance
embedding, so diffusers ignores their `guidance_scale`). Before, `--guidance-scale` on the toy FLUX changed nothing
(its folder's recorded true_cfg_scale won) and Qwen-Image sampled without CFG, with a diffusers notice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fixtures.tiny import TINY_PIPELINES
from fixtures.tiny_families import tiny_family
from pipelines.headhunter import HeadHunterPipeline
from tools.cli import main
from tools.settings import ASSETS, pipeline_call, takes_true_cfg, with_true_cfg

TOY_FLUX = ASSETS / "toy-flux"


def _image_and_record(path):
    image = Image.open(path)
    return np.asarray(image.convert("RGB")), json.loads(image.text["headhunter"])


def test_which_pipelines_take_true_cfg():
    assert takes_true_cfg(HeadHunterPipeline.from_pipe(tiny_family("qwenimage")))
    assert not takes_true_cfg(HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]()))
    assert takes_true_cfg(HeadHunterPipeline.from_pipe(TINY_PIPELINES["flux"]()))  # no guidance embedding
    from fixtures.tiny import tiny_flux

    assert not takes_true_cfg(
        HeadHunterPipeline.from_pipe(tiny_flux(guidance_embeds=True))
    )  # FLUX.1 dev-like


def test_the_cfg_is_copied_where_it_is_taken_and_left_out_of_the_call():
    qwen = HeadHunterPipeline.from_pipe(tiny_family("qwenimage"))
    call = with_true_cfg({"prompt": "a red circle", "guidance_scale": 6.0}, qwen)
    assert call == {
        "prompt": "a red circle",
        "guidance_scale": 6.0,
        "true_cfg_scale": 6.0,
        "negative_prompt": "",
    }
    assert pipeline_call(call, qwen) == {
        "prompt": "a red circle",
        "true_cfg_scale": 6.0,
        "negative_prompt": "",
    }
    given = with_true_cfg({"guidance_scale": 2.0, "negative_prompt": "blue"}, qwen)
    assert given["negative_prompt"] == "blue"  # the user's negative prompt stays
    sd3 = HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]())
    assert with_true_cfg({"guidance_scale": 6.0}, sd3) == {"guidance_scale": 6.0}
    assert pipeline_call({"guidance_scale": 6.0}, sd3) == {"guidance_scale": 6.0}


@pytest.mark.skipif(not TOY_FLUX.is_dir(), reason="the toy FLUX model is not in this checkout")
def test_guidance_scale_changes_the_toy_flux_image_and_is_recorded(tmp_path):
    def make(name, *flags):
        out = tmp_path / f"{name}.png"
        assert main(["generate", "a red circle", "--model", str(TOY_FLUX), "--steps", "3", "--seed", "3",
                     "--out", str(out), *flags]) == 0  # fmt: skip
        return _image_and_record(out)

    default, default_record = make("default")
    same, _ = make("same", "--guidance-scale", str(default_record["guidance_scale"]))
    low, low_record = make("low", "--guidance-scale", "1")
    high, high_record = make("high", "--guidance-scale", "9")
    np.testing.assert_array_equal(default, same)  # the folder's CFG is the default, as before
    assert default_record["true_cfg_scale"] == default_record["guidance_scale"]
    assert low_record["true_cfg_scale"] == 1.0 and high_record["true_cfg_scale"] == 9.0
    assert np.abs(low.astype(int) - high.astype(int)).max() > 0  # before: identical images
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(tmp_path / "high.png"), "--out", str(again)]) == 0
    np.testing.assert_array_equal(_image_and_record(again)[0], high)


def test_qwen_image_samples_with_cfg_and_no_ignored_guidance_notice(tmp_path, capfd):
    folder = tmp_path / "qwen"
    tiny_family("qwenimage").save_pretrained(folder, safe_serialization=True)
    capfd.readouterr()
    out = tmp_path / "qwen.png"
    assert main(["generate", "a red circle", "--model", str(folder), "--steps", "2", "--height", "16",
                 "--width", "16", "--guidance-scale", "4", "--out", str(out)]) == 0  # fmt: skip
    err = capfd.readouterr().err
    assert "guidance_scale is passed" not in err and "classifier-free guidance is not enabled" not in err
    _, record = _image_and_record(out)
    assert record["true_cfg_scale"] == 4.0 and record["negative_prompt"] == ""
