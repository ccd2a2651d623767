"""`headhunter generate --pag-heads` and `headhunter search` on a saved tiny model of every family the pipelines
load: SD3, SD3.5, FLUX.1, SD1.5, SDXL (hand-written layouts) and FLUX.2, Qwen-Image, Z-Image, Chroma, Wan (the
generic adapter, `guidance.adapters.heads_layout`), each from a plain prompt through its own tiny text encoder.

The ten take about 2 minutes on this project's CI machine (FLUX.2: a 30-layer tiny Mistral-3 over 512 tokens; Wan:
81 frames), so all but two are marked slow (`python -m pytest -q -m slow tests/test_cli_families.py`)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from fixtures.tiny import TINY_PIPELINES
from fixtures.tiny_families import EMBEDS_ONLY, TINY_FAMILIES, chat_tokenizer, tiny_family
from tools.cli import main

# One hand-written and one generic family in every run (about 12 s); all ten with `-m slow` (about 2 min here).
QUICK = ("sd35", "qwenimage")
FAMILIES = [
    n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in [*TINY_PIPELINES, *TINY_FAMILIES]
]
SIZE = {name: "32" for name in TINY_PIPELINES} | {name: "16" for name in TINY_FAMILIES}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`saved(name)`: the tiny pipeline of `name` saved with save_pretrained (text encoders included)."""
    root, cache = tmp_path_factory.mktemp("families"), {}

    def folder(name: str) -> str:
        if name not in cache:
            pipe = TINY_PIPELINES[name]() if name in TINY_PIPELINES else tiny_family(name)
            pipe.save_pretrained(root / name, safe_serialization=True)
            cache[name] = str(root / name)
        return cache[name]

    return folder


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_with_heads_and_search_run_on_every_family(saved, tmp_path, name):
    model, size = saved(name), SIZE[name]
    out = tmp_path / "guided.png"
    args = ["generate", "a red circle", "--model", model, "--pag-heads", "L0H0", "--steps", "2", "--height", size,
            "--width", size, "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    record = json.loads(Image.open(out).text["headhunter"])
    assert record["pag_groups"][0]["heads"][0] | {"attention": None} == {"layer": 0, "head": 0, "u": 1.0,
                                                                          "attention": None}  # fmt: skip
    frames = getattr(Image.open(out), "n_frames", 1)
    assert (frames > 1) == (name == "wan")  # a video is written as an animated PNG
    # The paper profile adopts its rounds without early stop, so a preset is written whatever the scores.
    search = ["search", "--model", model, "--objective", "saturation", "--prompt", "a red circle", "--seeds", "0",
              "--profile", "paper", "--k", "1", "--rounds", "1", "--steps", "1", "--size", size,
              "--out", str(tmp_path / "search")]  # fmt: skip
    assert main(search) == 0
    preset = json.loads((tmp_path / "search" / "preset.json").read_text())
    assert len(preset["groups"][0]["heads"]) == 1 and (tmp_path / "search" / "report.md").is_file()


def test_the_chat_tokenizer_cuts_qwen_image_s_system_prompt_where_qwen_does():
    """Qwen-Image drops the first tokens of its template (its system prompt, 34 of Qwen's tokens); with
    `chat_tokenizer` they end exactly where the user's prompt starts."""
    pipe = tiny_family("qwenimage")
    template, start = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    tokens = pipe.tokenizer.convert_ids_to_tokens(
        pipe.tokenizer(template.format("a red circle"))["input_ids"]
    )
    assert tokens[start : start + 4] == ["a", "red", "circle", "<|im_end|>"]
    assert chat_tokenizer().chat_template == pipe.tokenizer.chat_template


@pytest.mark.parametrize("name", EMBEDS_ONLY)
def test_the_families_without_an_encoder_still_take_prompt_embeddings(name):
    """The default builders (tests/test_families.py, tests/test_guider.py) keep taking embeddings; with an encoder
    the other components stay the same (FLUX.2's transformer excepted: its text width is 3 stacked layers)."""
    plain, with_encoder = TINY_FAMILIES[name](), tiny_family(name)
    assert plain.text_encoder is None and plain.tokenizer is None
    assert with_encoder.text_encoder is not None and with_encoder.tokenizer.chat_template
    if name != "flux2":
        for component in ("transformer", "vae"):
            ours, theirs = (
                plain.components[component].state_dict(),
                with_encoder.components[component].state_dict(),
            )
            assert all(torch.equal(ours[k], theirs[k]) for k in ours), component
