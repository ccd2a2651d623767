"""Smaller promises of the command line: batch validation reports every problem of a job file in one pass (the
model's heads among them, before any weight loads); `presets list` shows every usable preset's layers x heads."""

from __future__ import annotations

import json

import pytest

from tools.cli import main
from tools.settings import ASSETS, folder_heads_per_layer, read_presets


def test_batch_reports_every_problem_of_a_job_file_in_one_pass_before_the_model_loads(
    tiny_folder, tmp_path, monkeypatch, capsys
):
    import tools.cli as cli

    monkeypatch.setattr(cli, "_load", lambda *a: pytest.fail("the model loaded"))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(job) for job in [
        {"prompt": "a red circle", "colour": "red"},
        {"prompt": "a blue square", "pag_heads": "L9H0"},  # the tiny SD3 has layers 0-3
        {"prompt": "a green triangle", "num_inference_steps": 0},
        {"prompt": "a red square", "pag_heads": "L1H7"},  # and heads 0-3
    ]) + "\n")  # fmt: skip
    assert main(["batch", str(jobs), "--model", tiny_folder("sd3"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s), nothing was generated" in err
    assert "line 1: unknown key 'colour'" in err
    assert "line 2: pag_heads" in err and "layer 9 is out of range" in err
    assert "line 3: num_inference_steps" in err
    assert "line 4: pag_heads" in err and "head 7 is out of range" in err
    assert not (tmp_path / "out").exists()


def test_the_layout_read_before_loading_is_the_loaded_model_s(tiny_folder):
    from guidance.adapters import heads_layout
    from guidance.swap import denoiser_of
    from pipelines.headhunter import HeadHunterPipeline

    for name in ("sd3", "sd35", "flux", "sd15", "sdxl"):
        pipe = HeadHunterPipeline.from_pretrained(tiny_folder(name))
        assert folder_heads_per_layer(tiny_folder(name)) == heads_layout(denoiser_of(pipe)).heads_per_layer, (
            name
        )
    assert folder_heads_per_layer("org/model") is None


@pytest.mark.skipif(not (ASSETS / "toy-sd3" / "model_index.json").is_file(), reason="no toy models")
def test_presets_list_shows_every_usable_preset_s_layers_x_heads(capsys):
    """The dark preset records no layers x heads: they are read from the model it records (the toy SD3)."""
    assert main(["presets", "list"]) == 0
    rows = {
        line.split()[0]: line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")
    }
    usable = [p.name for p in read_presets() if p.selection is not None]
    assert "8 x 8" in rows["toy-sd3-dark"] and "24 x 24" in rows["sd3-paper-dark"]
    assert all(rows[name].split()[2] != "-" for name in usable), rows
