"""The CLI's records make their images again, anywhere: structured cross-attention in `generate` and `batch`,
a preset's own w from a PNG alone in another working directory, strict JSON from `search` (the quiet console:
tests/test_cli_console.py; `--from-png`: tests/test_cli_from_png.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guidance.heads import HeadSelection, read_preset
from tools.cli import main
from tools.settings import ASSETS, record_call, record_model

PROMPT = "a red circle and a blue square"
SMALL = ["--steps", "2", "--height", "32", "--width", "32"]


def _record(png: Path) -> dict:
    return json.loads(Image.open(png).text["headhunter"])


def _again(record: dict, **change) -> np.ndarray:
    """The image a record describes, made again from the record alone (in the working directory of the call)."""
    from pipelines.headhunter import HeadHunterPipeline

    pipe = HeadHunterPipeline.from_pretrained(record_model(record))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(record["seed"])
    return np.asarray(pipe(generator=generator, **{**record_call(record), **change}).images[0])


# -- structured cross-attention -------------------------------------------------------------------------------


def test_a_structured_png_records_mode_and_phrases_and_is_made_again_bit_for_bit(tiny_folder, tmp_path):
    out = tmp_path / "s.png"
    args = [
        "generate",
        PROMPT,
        "--model",
        tiny_folder("sd15"),
        "--structured",
        "conjunction",
        "--out",
        str(out),
    ]
    assert main([*args, *SMALL]) == 0
    record = _record(out)
    assert record["structured"] == "conjunction"
    assert record["noun_phrases"] == ["a red circle", "a blue square"]
    assert record_call(record)["structured"] == "conjunction"
    assert np.array_equal(_again(record), np.asarray(Image.open(out)))
    assert not np.array_equal(_again(record, structured=None, noun_phrases=None), np.asarray(Image.open(out)))


@pytest.mark.parametrize(
    ("model", "flags", "message"),
    [
        ("sd3", ["--structured", "conjunction"],
         "--structured 'conjunction' is not available for this model's family (StableDiffusion3Pipeline); allowed "
         "there: 'key-value' or off"),
        ("flux", ["--structured", "key-value"],
         "--structured 'key-value' is not available for this model's family (FluxPipeline); allowed there: off"),
        ("sd3", ["--structured", "key-value", "--pag-heads", "L1H0"],
         "--structured 'key-value' does not combine with pag_heads on this model's family "
         "(StableDiffusion3Pipeline)"),
        ("sd15", ["--structured", "both"], "argument --structured: 'both' is not allowed; allowed: off, key-value, "
         "conjunction"),
    ],
)  # fmt: skip
def test_structured_is_refused_by_family_before_the_model_loads(
    tiny_folder, tmp_path, monkeypatch, capsys, model, flags, message
):
    import tools.cli as cli

    monkeypatch.setattr(cli, "_load", lambda *a: pytest.fail("the model loaded"))
    args = ["generate", "x", "--model", tiny_folder(model), "--out", str(tmp_path / "a.png"), *flags]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_structured_flag_is_derived_from_its_setting():
    from guidance.config import STRUCTURED_SETTINGS
    from tools.cli import build_parser

    setting = STRUCTURED_SETTINGS["structured"]
    assert build_parser().parse_args(["generate", "x"]).structured is setting.default is None
    assert build_parser().parse_args(["generate", "x", "--structured", "key-value"]).structured == "key-value"
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    action = next(a for a in sub._actions if a.dest == "structured")
    assert action.help.startswith(setting.help) and action.help.endswith("(default: off)")
    assert action.metavar == "{off,key-value,conjunction}"


def test_batch_lines_with_structured_are_checked_per_line_and_recorded(tiny_folder, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"id": "s", "prompt": PROMPT, "structured": "conjunction", "seed": 1}) + "\n"
        + json.dumps({"id": "p", "prompt": PROMPT, "seed": 1}) + "\n"
    )  # fmt: skip
    small = ["--steps", "2", "--height", "32", "--width", "32", "--quiet"]
    # SD3 takes key-value only: line 1 is refused by line number before any work, nothing is written.
    assert (
        main(["batch", str(jobs), "--model", tiny_folder("sd3"), "--out", str(tmp_path / "b3"), *small]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "line 1: structured 'conjunction' is not available for this model's family (StableDiffusion3Pipeline)"
        in err
    )
    assert not (tmp_path / "b3").exists()
    out = tmp_path / "b15"
    assert main(["batch", str(jobs), "--model", tiny_folder("sd15"), "--out", str(out), *small]) == 0
    manifest = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert manifest["s-0"]["structured"] == "conjunction"
    assert manifest["s-0"]["noun_phrases"] == ["a red circle", "a blue square"]
    assert "structured" not in manifest["p-0"] and "noun_phrases" not in manifest["p-0"]
    structured, plain = (np.asarray(Image.open(out / f"{i}-0.png")) for i in ("s", "p"))
    assert not np.array_equal(structured, plain)
    assert np.array_equal(_again(_record(out / "s-0.png")), structured)


# -- a PNG alone makes its image again, in another working directory --------------------------------------------


def test_a_cli_png_with_a_preset_w_is_made_again_from_the_png_alone_elsewhere(
    tiny_folder, tmp_path, monkeypatch
):
    """The model given relative to the working directory is recorded so; a preset's w (1.5, not the default 3)
    and its u are recorded with the heads, so neither the preset file nor the first folder is needed."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        (folder / "models").mkdir(parents=True)
        (folder / "models" / "tiny").symlink_to(tiny_folder("sd3"), target_is_directory=True)
    preset = first / "style.json"
    preset.write_text(json.dumps({"groups": [
        {"name": "style", "scale": 1.5, "heads": [{"layer": 1, "head": 0, "strength": 0.5}, {"layer": 2, "head": 1}]}
    ]}))  # fmt: skip
    monkeypatch.chdir(first)
    assert main(["generate", "a red circle", "--model", "models/tiny", "--pag-heads", "style.json",
                 "--pag-strength", "0.75", "--seed", "5", "--out", "made.png", *SMALL]) == 0  # fmt: skip
    # An absolute path below the working directory is recorded relative to it.
    assert main(["generate", "a red circle", "--model", str(first / "models" / "tiny"), "--out", "abs.png",
                 *SMALL]) == 0  # fmt: skip
    assert _record(first / "abs.png")["model"] == "./models/tiny"

    shutil.copy(first / "made.png", second / "made.png")
    shutil.rmtree(first)
    monkeypatch.chdir(second)
    record = _record(Path("made.png"))
    assert record["model"] == "./models/tiny" and record["pag_preset"] == "style"
    assert len(record["pag_preset_sha256"]) == 64
    assert [(h["u"], g["scale"]) for g in record["pag_groups"] for h in g["heads"]] == [
        (0.5, 1.5),
        (0.75, 1.5),
    ]
    assert np.array_equal(_again(record), np.asarray(Image.open("made.png")))
    default_w = {"pag_heads": HeadSelection.parse(record["pag_heads"]), "pag_scale": 3.0}
    assert not np.array_equal(_again(record, **default_w), np.asarray(Image.open("made.png")))


def test_shipped_models_are_recorded_by_their_assets_name_and_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert record_model({"model": "assets/toy-sd3"}) == str(ASSETS / "toy-sd3")
    assert record_model({"model": "org/model"}) == "org/model"


# -- search outputs are strict JSON ---------------------------------------------------------------------------


def test_search_with_a_failing_guard_writes_strict_json_and_says_why(tiny_folder, tmp_path, monkeypatch):
    """A guard that every head fails scores -inf: the preset holds null with "guard": "failed" (strict JSON,
    read by the strict preset reader), the report says why each round was adopted or not, the model as named."""
    from guidance.search import HeadSearch

    real = HeadSearch.greedy

    def two_rounds(self, *args, **kwargs):
        history = real(self, *args, **kwargs)
        failed = {**history[-1], "round": 2, "score": -np.inf, "validation": None, "adopted": False,
                  "why": "not adopted: the guard objective failed on the search pairs"}  # fmt: skip
        return [*history, failed]

    monkeypatch.setattr(HeadSearch, "greedy", two_rounds)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_folder("sd3"), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    args = ["search", "--model", "models/tiny", "--objective", "saturation", "--guard", "saturation",
            "--max-drop", "0", "--prompt", "a red circle", "--seeds", "0", "--k", "1", "--sweep", "--steps", "1",
            "--size", "32", "--out", "out"]  # fmt: skip
    assert main(args) == 0
    data = read_preset(Path("out/preset.json"))  # strict: no NaN / Infinity
    assert data["model"] == "./models/tiny"
    head_map = data["scores"]["head_map"]
    assert all(head_map[h] is None for h in head_map["guard_failed"]) and head_map["guard_failed"]
    failed = data["scores"]["rounds"][1]
    assert failed["score"] is None and failed["guard"] == "failed"
    report = Path("out/report.md").read_text()
    assert "model `./models/tiny`" in report
    assert "round 1: +" in report and "(adopted: " in report
    assert "round 2: +" in report and "guard failed (not adopted: the guard objective failed" in report
    # Said in words: what a score is, what the guard asks and what its failure means, how a round is adopted.
    assert "## How to read this" in report and "the unguided images score" in report
    assert "Guard: `saturation` must drop at most 0 below the unguided images' score." in report
    assert (
        "scores **guard failed** (-inf here" in report and "broke the guard (`saturation` must drop" in report
    )
    assert "a round is adopted only if the new selection beats the best earlier one" in report
    assert "heads failed the guard alone (crossed grey cells in headmap.png)" in report


def test_strict_scores_marks_each_failed_guard():
    from guidance.search import strict_scores

    scores = {"rounds": [{"score": -np.inf, "validation": np.float32(np.inf)}], "head_map": {"L0H0": -np.inf,
              "L0H1": 0.5}, "unguided": np.float64(0.25)}  # fmt: skip
    assert strict_scores(scores) == {
        "rounds": [{"score": None, "guard": "failed", "validation": None, "validation_guard": "failed"}],
        "head_map": {"L0H0": None, "L0H1": 0.5, "guard_failed": ["L0H0"]},
        "unguided": 0.25,
    }
    json.dumps(strict_scores(scores), allow_nan=False)
