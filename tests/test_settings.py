"""tools.settings: the sampling settings a model folder records, as call arguments; what made an image."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tools.settings import (
    ASSETS,
    image_record,
    recommended_call,
    recommended_settings,
    record_call,
    record_parameters,
    save_png,
)

FLUX = ASSETS / "toy-flux"


def test_a_folder_without_settings_gets_the_defaults(tmp_path):
    assert recommended_settings(tmp_path) == {}
    assert recommended_call(tmp_path, steps=7, guidance_scale=2.0) == {
        "num_inference_steps": 7,
        "guidance_scale": 2.0,
    }


def test_recorded_settings_become_call_arguments(tmp_path):
    (tmp_path / "toyworld.json").write_text(json.dumps({
        "height": 48, "width": 32, "num_inference_steps": 9, "guidance_scale": 4.0, "true_cfg_scale": 2.5,
        "max_sequence_length": 12, "note": "not a call argument"}))  # fmt: skip
    assert recommended_call(tmp_path) == {
        "num_inference_steps": 9, "guidance_scale": 4.0, "height": 48, "width": 32, "max_sequence_length": 12,
        "true_cfg_scale": 2.5, "negative_prompt": ""}  # fmt: skip


@pytest.mark.skipif(not (FLUX / "model_index.json").exists(), reason="assets/toy-flux not present")
def test_the_toy_flux_called_with_its_recommended_call_samples_at_its_trained_size():
    """FluxPipeline's default size is 1024 px: without the recorded 64 px a 64-px model draws noise, slowly."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(FLUX)
    pipe.set_progress_bar_config(disable=True)
    call = dict(recommended_call(FLUX), num_inference_steps=1)
    image = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).images[0]
    settings = json.loads((FLUX / "toyworld.json").read_text())
    assert image.size == (settings["width"], settings["height"]) == (64, 64)


# -- what made an image: one record for every front end ------------------------------------------------------


def test_model_names_are_never_absolute_paths_of_this_machine(tmp_path, monkeypatch):
    from tools.settings import model_name

    (tmp_path / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert model_name("stabilityai/stable-diffusion-3-medium-diffusers") == (
        "stabilityai/stable-diffusion-3-medium-diffusers"
    )
    assert model_name(tmp_path / "models" / "mine") == model_name("./models/mine/") == "./models/mine"
    assert model_name(ASSETS / "toy-sd3") == "assets/toy-sd3"  # the shipped models, from any folder
    elsewhere = model_name(tmp_path.parent)
    assert elsewhere == ".." and not os.path.isabs(elsewhere)


def test_the_record_serves_the_demo(tmp_path):
    """The demo's own record (tools.demo.guidance_record, which the demo's tests check) is a part of image_record's."""
    from guidance.heads import HeadSelection
    from tools.demo import guidance_record

    selection = HeadSelection.parse("style: L0H1=0.25, L1H0")
    pag = {"pag_scale": 1.5, "pag_strength": 1.0, "pag_identity": "image", "pag_start": 0.1, "pag_stop": 0.9}
    record = image_record(
        "sd3", {"prompt": "a red circle", "seed": 3}, {**pag, "pag_heads": selection}, "custom"
    )
    expected = guidance_record(selection, pag)
    assert {k: record[k] for k in expected} == expected and record["pag_preset"] == "custom"
    assert record["model"] == "sd3" and record["guidance"] == "softpag"


def test_a_preset_records_its_own_scale_name_and_hash(tmp_path):
    preset = tmp_path / "style.json"
    preset.write_text(json.dumps({"groups": [{"name": "style", "heads": ["L1H0"], "scale": 2.0}]}))
    record = image_record("m", {"prompt": "x", "seed": 1}, {"pag_heads": str(preset), "pag_scale": 3.0})
    assert record["pag_groups"] == [
        {"name": "style", "scale": 2.0, "heads": [{"layer": 1, "head": 0, "attention": "attn", "u": 1.0}]}
    ]
    assert record["pag_preset"] == "style" and "pag_scale" not in record
    assert record["pag_preset_sha256"] == hashlib.sha256(preset.read_bytes()).hexdigest()
    assert "pag_group_scales: style=2" in record_parameters(record)
    assert image_record("m", {"prompt": "x", "negative_prompt": None}, {"pag_heads": ""}) == {
        "model": "m", "prompt": "x", "guidance": "none"}  # fmt: skip


def test_a_batch_png_is_made_again_from_its_record_bit_for_bit(tmp_path):
    """A preset whose w (1.5) is not the default pag_scale (3), and a u of its own beside the job's: the PNG's
    record, fed back through record_call, gives the same pixels; the default w would not."""
    from fixtures.tiny import TINY_PIPELINES
    from guidance.heads import HeadSelection
    from pipelines.headhunter import HeadHunterPipeline
    from tools.batch import BatchRunner, plan

    pipe = HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]())
    pipe.set_progress_bar_config(disable=True)
    preset = tmp_path / "style.json"
    preset.write_text(json.dumps({"groups": [
        {"name": "style", "scale": 1.5, "heads": [{"layer": 1, "head": 0, "strength": 0.5}, {"layer": 2, "head": 1}]}
    ]}))  # fmt: skip
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "p", "prompt": "a red circle", "seed": 3, "pag_heads": str(preset),
                                "pag_strength": 0.75, "pag_stop": 0.8}))  # fmt: skip
    items, _ = plan(jobs, {"num_inference_steps": 2, "height": 32, "width": 32}, None)
    BatchRunner(pipe, "tiny-sd3", tmp_path / "out", batch_size=1).run(items, progress=False)
    png = Image.open(tmp_path / "out" / "p-0.png")
    record = json.loads(png.text["headhunter"])
    assert [(h["u"], g["scale"]) for g in record["pag_groups"] for h in g["heads"]] == [
        (0.5, 1.5),
        (0.75, 1.5),
    ]
    assert record["pag_preset"] == "style" and record["model"] == "tiny-sd3"

    def make(**call) -> np.ndarray:
        generator = torch.Generator().manual_seed(record["seed"])
        return np.asarray(pipe(generator=generator, **call).images[0])

    assert np.array_equal(make(**record_call(record)), np.asarray(png))
    default_w = {
        **record_call(record),
        "pag_heads": HeadSelection.parse(record["pag_heads"]),
        "pag_scale": 3.0,
    }
    assert not np.array_equal(make(**default_w), np.asarray(png))


def test_save_png_replaces_a_link_instead_of_writing_through_it(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.write_bytes(b"theirs")
    target = tmp_path / "image.png"
    target.with_name(".image.png.tmp").symlink_to(theirs)
    save_png(Image.new("RGB", (4, 4)), target, "p", {"seed": 1})
    assert theirs.read_bytes() == b"theirs" and Image.open(target).text["headhunter"] == '{"seed": 1}'
    assert not target.with_name(".image.png.tmp").exists()
