"""The Structured prompts tab: structured cross-attention beside plain generation of one seed on the toy SD1.5
(loaded on first use), its noun phrases and the README's measured effect; bad inputs named."""

import json
from pathlib import Path

import pytest
from PIL import Image

import app as demo_app
from guidance.config import STRUCTURED_SETTINGS
from tools import demo as tools

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red triangle on the left and a blue square on the right"


def _path(file) -> str:
    return file["path"] if isinstance(file, dict) else file


def _record(file) -> dict:
    return json.loads(Image.open(_path(file)).text["headhunter"])


@pytest.fixture(scope="module")
def compared(client):
    """One conjunction comparison and the same seed with structured off, through the HTTP API."""
    on = client.predict(PROMPT, "conjunction", 3, 2, api_name="/structured")
    off = client.predict(PROMPT, "off", 3, 2, api_name="/structured")
    return on, off


def test_structured_is_shown_beside_plain_of_the_same_seed_with_its_phrases(compared):
    (phrases, structured, plain, note, files), _ = compared
    assert "**Noun phrases found** (each encoded alone" in phrases
    assert "- a red triangle" in phrases and "- a blue square" in phrases
    made, same_seed = Image.open(structured), Image.open(plain)
    assert made.size == same_seed.size == (512, 512)  # 64 px, enlarged 8x with nearest neighbour
    assert made.tobytes() != same_seed.tobytes()  # the phrases changed the image
    assert (
        "seed 3 · 2 steps · structured: conjunction · shown at 8x, native 64x64 px, nearest neighbour" in note
    )
    assert "**+0.052 [+0.025, +0.080]**" in note and "was not measured" not in note
    records = [_record(f) for f in files]
    assert records[0]["structured"] == "conjunction" and "a red triangle" in records[0]["noun_phrases"]
    assert "structured" not in records[1] and records[0]["seed"] == records[1]["seed"] == 3
    assert records[0]["model"] == "assets/toy-sd15"


def test_plain_is_the_same_call_with_structured_off(compared):
    (_, _, plain, _, _), (phrases, structured, plain_off, _, files) = compared
    assert structured is None and len(files) == 1
    assert "(mode off: found, not used)" in phrases
    assert Image.open(plain).tobytes() == Image.open(plain_off).tobytes()


def test_the_measured_effect_is_the_readmes():
    readme = (ROOT / "README.md").read_text()
    for interval in ("+0.052 [+0.025, +0.080]", "+0.021 [-0.007, +0.050]", "+0.010 [-0.005, +0.025]"):
        assert interval in readme and interval in tools.STRUCTURED_EFFECT


def test_the_modes_come_from_the_structured_setting():
    modes = [c for c in STRUCTURED_SETTINGS["structured"].choices if c is not None]
    assert tools.structured_choices(modes) == ["conjunction", "key-value", "off"]
    assert tools.structured_choices(("key-value",)) == ["key-value", "off"]  # SD3: its experimental port only
    assert tools.structured_mode("off", ["conjunction", "off"]) is None
    with pytest.raises(
        tools.DemoInputError, match="Mode='spin' is not supported; allowed: 'conjunction' or 'off'"
    ):
        tools.structured_mode("spin", ["conjunction", "off"])


def test_the_model_loads_on_first_use(tiny_folder):
    tab = demo_app.StructuredPrompts(tiny_folder("sd15"), limits=demo_app.Limits(max_steps=2, max_size=64))
    assert tab.pipe is None and tab.reason is None
    phrases, structured, plain, note, files = tab.compare("a red circle and a blue square", "key-value", 0, 1)
    assert tab.pipe is not None and structured is not None and len(files) == 2
    assert "This tab runs" in note and "was not measured" in note  # not the toy SD1.5 the README measured


def test_a_model_without_structured_attention_is_named(tiny_folder, tmp_path, capsys):
    flux = demo_app.StructuredPrompts(tiny_folder("flux"))
    assert "is a FluxPipeline, which has no structured cross-attention" in flux.reason
    with pytest.raises(demo_app.InputError, match="has no structured cross-attention"):
        flux.compare(PROMPT, "off", 0, 1)
    assert "Structured prompts need the model" in demo_app.StructuredPrompts(tmp_path / "missing").reason
    with pytest.raises(SystemExit) as raised:
        demo_app.main(["--structured-model", tiny_folder("flux")])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "app.py: error: --structured-model" in err and "no structured cross-attention" in err
