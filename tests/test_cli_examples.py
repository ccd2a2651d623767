"""The shipped examples/ files serve the README's commands: each command runs as written (from a folder where
`examples/` is the project's), with settings made tiny (steps, seeds, frames; the search on a tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tools.batch import plan
from tools.cli import main
from tools.settings import ASSETS, DEFAULT_MODEL, model_vocabulary, resolve_heads, structured_support

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "model_index.json").is_file(), reason="no toy models")


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working directory whose `examples/` is the project's."""
    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _prompts() -> list[str]:
    return [line.strip() for line in (EXAMPLES / "prompts.txt").read_text().splitlines() if line.strip()]


def test_the_example_prompts_are_what_the_toy_models_know():
    prompts = _prompts()
    assert len(prompts) >= 5
    for toy in ("toy-sd3", "toy-flux", "toy-sd15"):
        words = model_vocabulary(ASSETS / toy)
        assert {p: words.problems(p) for p in prompts} == {p: [] for p in prompts}, toy


def test_the_example_job_file_is_valid_with_a_preset_and_structured_lines():
    items, problems = plan(EXAMPLES / "jobs.jsonl", {}, {"attn": dict.fromkeys(range(8), 8)}, resolve_heads,
                           structured=structured_support(str(DEFAULT_MODEL)))  # fmt: skip
    assert problems == []
    settings = {item.id: item.settings for item in items}
    assert settings["dark-0"]["pag_heads"] == "toy-sd3-dark" and settings["structured-0"]["structured"]
    words = model_vocabulary(DEFAULT_MODEL)
    assert all(words.problems(s["prompt"]) == [] for s in settings.values())


def test_generate_as_in_the_readme(here, capsys):
    prompt = _prompts()[2]
    assert main(["generate", prompt, "--pag-heads", "toy-sd3-dark", "--compare", "--steps", "1"]) == 0
    assert {p.name for p in (here / "outputs").iterdir()} == {"image.png", "image-unguided.png"}
    assert capsys.readouterr().err == ""  # no vocabulary warning


def test_search_on_the_example_prompts(here):
    """On a tiny SD3 of 2 layers x 2 heads (the toy's 64 heads x 24 pairs would take minutes)."""
    from fixtures.tiny import tiny_sd3

    tiny_sd3(num_layers=2, num_heads=2).save_pretrained(here / "tiny")
    args = ["search", "--objective", "toy-dark", "--guard", "toy-fidelity", "--prompts", "examples/prompts.txt",
            "--seeds", "0", "1", "2", "--sweep", "--out", "outputs/search"]  # fmt: skip
    tiny = ["--model", "tiny", "--steps", "1", "--size", "32", "--k", "1"]
    assert main([*args, *tiny]) == 0
    assert {"headmap.png", "report.md"} <= {p.name for p in (here / "outputs" / "search").iterdir()}
    assert f"{len(_prompts())} prompts x 3 seeds" in (here / "outputs" / "search" / "report.md").read_text()


def test_batch_on_the_example_jobs(here):
    assert main(["batch", "examples/jobs.jsonl", "--out", "outputs/batch", "--batch-size", "8", "--steps", "1",
                 "--quiet"]) == 0  # fmt: skip
    manifest = [
        json.loads(line) for line in (here / "outputs" / "batch" / "manifest.jsonl").read_text().splitlines()
    ]
    assert sorted(r["id"] for r in manifest) == ["dark-0", "fidelity-0", "fidelity-1", "heads-0", "plain-0",
                                                 "structured-0"]  # fmt: skip
    by_id = {r["id"]: r for r in manifest}
    assert (
        by_id["dark-0"]["pag_preset"] == "toy-sd3-dark" and by_id["structured-0"]["structured"] == "key-value"
    )


@pytest.mark.skipif(
    not (ASSETS / "toy-upfusion" / "model_index.json").is_file(), reason="no toy UpFusion model"
)
def test_views_and_orbit_of_the_example_object(here):
    front, side = (Image.open(EXAMPLES / "views" / f"{name}.png") for name in ("front", "side"))
    assert front.size == side.size
    assert main(["views", "examples/views/front.png", "examples/views/side.png", "--azimuth", "90", "180",
                 "--elevation", "20", "--out", "outputs/views", "--steps", "1"]) == 0  # fmt: skip
    assert sorted(p.name for p in (here / "outputs" / "views").iterdir()) == [
        "view-az180-el20.png", "view-az90-el20.png"]  # fmt: skip
    assert (
        main(["views", "examples/views/front.png", "--orbit", "3", "--out", "outputs/orbit", "--steps", "1"])
        == 0
    )
    assert (here / "outputs" / "orbit" / "orbit.gif").is_file()
