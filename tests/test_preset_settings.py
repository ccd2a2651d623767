"""Presets that recommend call settings (issue 28): a preset's "settings" (`pag_every`, `pag_branch`, `pag_start`,
`pag_stop`, `pag_identity`) fill the arguments a call leaves at their defaults; explicit arguments win; bad keys or
values are refused naming the preset key."""

import json

import pytest
import torch

from fixtures.tiny import tiny_sd3
from guidance.config import SoftPAGConfig, SoftPAGError
from guidance.heads import HeadSelection, HeadSelectionError
from pipelines.headhunter import HeadHunterPipeline

CALL = dict(prompt="a red circle", num_inference_steps=4, height=32, width=32, max_sequence_length=8)


def write_preset(tmp_path, settings, name="p.json"):
    data = {"format": "headhunter-preset", "version": 1, "groups": [{"name": "g", "heads": ["L1H0", "L2H3"]}]}
    if settings is not None:
        data["settings"] = settings
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_preset_settings_fill_the_defaults(tmp_path):
    path = write_preset(
        tmp_path, {"pag_every": 2, "pag_start": 0.0, "pag_stop": 0.3, "pag_identity": "image"}
    )
    config = SoftPAGConfig(str(path))
    assert (config.every, config.start, config.stop, config.identity) == (2, 0.0, 0.3, "image")
    # pag_start equals its default: nothing was filled for it
    assert config.from_preset == ("pag_every", "pag_stop", "pag_identity")


def test_explicit_arguments_win_over_the_preset(tmp_path):
    path = write_preset(tmp_path, {"pag_every": 2, "pag_stop": 0.3})
    config = SoftPAGConfig(str(path), every=3, stop=0.8)
    assert (config.every, config.stop, config.from_preset) == (3, 0.8, ())


def test_without_settings_drops_them(tmp_path):
    selection = HeadSelection.load(write_preset(tmp_path, {"pag_every": 2}))
    config = SoftPAGConfig(selection.without_settings())
    assert (config.every, config.from_preset) == (1, ())
    assert "settings" not in selection.without_settings().to_json()


def test_settings_survive_save_and_load(tmp_path):
    selection = HeadSelection.load(write_preset(tmp_path, {"pag_branch": "uncond", "pag_every": 2}))
    again = HeadSelection.load(selection.save(tmp_path / "again.json"))
    assert again.metadata["settings"] == {"pag_branch": "uncond", "pag_every": 2}


def test_unknown_setting_is_refused_naming_it(tmp_path):
    with pytest.raises(HeadSelectionError, match=r"'pag_scale'.*allowed: pag_every, pag_branch"):
        SoftPAGConfig(str(write_preset(tmp_path, {"pag_scale": 2.0})))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pag_every": 0}, r"settings\.pag_every=0 is out of range"),
        ({"pag_every": 1.5}, r"settings\.pag_every=1\.5 must be an integer"),
        (
            {"pag_branch": "both"},
            r"settings\.pag_branch='both' is not supported; allowed: 'cond' or 'uncond'",
        ),
        ({"pag_start": 0.5, "pag_stop": 0.2}, r"pag_start=0\.5 must be below pag_stop=0\.2"),
    ],
)
def test_bad_preset_values_are_refused(tmp_path, settings, message):
    with pytest.raises(SoftPAGError, match=message):
        SoftPAGConfig(str(write_preset(tmp_path, settings)))


def test_settings_that_are_not_an_object_are_refused(tmp_path):
    with pytest.raises(HeadSelectionError, match=r"preset key 'settings'=.* must be a JSON object"):
        SoftPAGConfig(str(write_preset(tmp_path, [2])))


def test_a_preset_with_settings_gives_the_images_of_the_explicit_call(tmp_path):
    pipe = HeadHunterPipeline.from_pipe(tiny_sd3())
    pipe.set_progress_bar_config(disable=True)

    def latents(**kwargs):
        generator = torch.Generator().manual_seed(0)
        return pipe(**CALL, guidance_scale=4.0, output_type="latent", generator=generator, **kwargs).images

    recommended = write_preset(tmp_path, {"pag_every": 2, "pag_stop": 0.75})
    plain = write_preset(tmp_path, None, "plain.json")
    with_settings = latents(pag_heads=str(recommended))
    assert torch.equal(with_settings, latents(pag_heads=str(plain), pag_every=2, pag_stop=0.75))
    assert not torch.equal(with_settings, latents(pag_heads=str(plain)))
