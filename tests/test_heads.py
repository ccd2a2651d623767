"""Head selections: notation, tuples, JSON presets, and errors that name the parameter and the entry."""

import json
import math

import pytest

from guidance.heads import HeadEntry, HeadGroup, HeadSelection, HeadSelectionError

LAYOUT = {"attn": {layer: 4 for layer in range(6)}, "attn2": {0: 4, 1: 4}}


def test_paper_notation_and_strengths():
    sel = HeadSelection.parse("L1H10, L5H3=0.5 L3H1/attn2")
    assert sel.entries == (HeadEntry(1, 10), HeadEntry(5, 3, 0.5), HeadEntry(3, 1, None, "attn2"))
    assert str(sel) == "L1H10, L5H3=0.5, L3H1/attn2"
    assert HeadSelection.parse(str(sel)) == sel
    named = HeadSelection.parse("q: L1H2; s: L3H4")
    assert str(named) == "q: L1H2; s: L3H4" and HeadSelection.parse(str(named)) == named


def test_named_groups_and_tuples():
    sel = HeadSelection.parse("quality: L1H2, L3H0; style: L5H1")
    assert [g.name for g in sel.groups] == ["quality", "style"]
    assert HeadSelection.parse([(1, 2), (3, 0, 0.25)]).entries == (HeadEntry(1, 2), HeadEntry(3, 0, 0.25))


def test_json_roundtrip(tmp_path):
    sel = HeadSelection.parse(
        {"model": "toy", "groups": [{"name": "q", "scale": 2.0, "heads": ["L1H2=0.5"]}]}
    )
    path = sel.save(tmp_path / "preset.json")
    data = json.loads(path.read_text())
    assert data["format"] == "headhunter-preset" and data["model"] == "toy" and "created" in data
    again = HeadSelection.parse(str(path))
    assert again.groups == sel.groups and again.groups[0].scale == 2.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("L1H10=1.5", r"L1H10=1.5: strength u=1.5 is out of range; allowed: a finite number in \[0, 1\]"),
        ("L1H10=nan", "strength u=nan"),
        ("L-1H2", r"layer index=-1 is out of range; allowed: an integer in \[0, 99999\]"),
        ([(1.5, 2)], r"layer index=1.5 must be an integer in \[0, 99999\]"),
        ("L1H2, L1H2", "duplicate entry L1H2"),
        ("layer1", "cannot read 'layer1'"),
        ("", "at least one head"),
        ("L1H2/attn3", "attention 'attn3' must be one of"),
        ([(1, 2, math.inf)], "strength u=inf"),
        (42, "pag_heads=42 is not a head selection"),
        ("missing.json", "preset file 'missing.json' does not exist"),
    ],
)
def test_bad_selections_name_the_entry(value, message):
    with pytest.raises(HeadSelectionError, match=message) as info:
        HeadSelection.parse(value)
    assert "pag_heads" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("L6H0", r"L6H0: layer 6 is out of range; this model's 'attn' layers are 0\.\.5"),
        ("L2H4", r"L2H4: head 4 is out of range; layer 2 has heads 0\.\.3"),
        ("L4H0/attn2", r"layer 4 is out of range; this model's 'attn2' layers are 0\.\.1"),
    ],
)
def test_validation_against_the_model(text, message):
    with pytest.raises(HeadSelectionError, match=message):
        HeadSelection.parse(text).validate(LAYOUT)


def test_attn2_on_a_model_without_it():
    with pytest.raises(HeadSelectionError, match="addresses 'attn2', which this model does not have"):
        HeadSelection.parse("L0H0/attn2").validate({"attn": {0: 4}, "attn2": {}})


def test_bad_preset_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(HeadSelectionError, match="is not valid JSON"):
        HeadSelection.parse(path)
    path.write_text('{"heads": []}')
    with pytest.raises(HeadSelectionError, match="needs a 'groups' list"):
        HeadSelection.parse(path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("L０H０", "cannot read 'L０H０'"),
        ("L1H1=٠.٥", "strength '٠.٥' is not a number"),
        ("L" + "7" * 10_000 + "H0", "layer index has 10000 digits"),
        ({"groups": None}, "'groups'=None must be a JSON list"),
        (
            {"groups": [{"heads": ["L1H1"], "scale": 1e6}]},
            r"scale=1000000.0 is out of range; allowed: a finite number in \[-100, 100\]",
        ),
        ({"groups": [{"heads": ["L1H1"]}], "extra": 1}, "unknown preset key 'extra'"),
        ({"groups": [{"heads": ["L1H1"]}], "model": 5}, "preset key 'model'=5 must be a JSON string"),
        (
            HeadSelection((HeadGroup((HeadEntry(1, 1, 5.0),)),)),
            r"strength u=5.0 is out of range; allowed: a finite number in \[0, 1\]",
        ),
        (HeadSelection((HeadGroup((HeadEntry(1, 1),), "", None),)), "group name '' must be printable"),
    ],
)
def test_strict_notation_schema_and_direct_selections(value, message):
    with pytest.raises(HeadSelectionError, match=message):
        HeadSelection.parse(value)


@pytest.mark.parametrize("content", ["42", "[1, 2]", '{"groups": null}', "null"])
def test_non_object_preset_files_are_named(tmp_path, content):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(HeadSelectionError, match="pag_heads: "):
        HeadSelection.parse(path)


def test_a_preset_for_another_model_says_which():
    from tools.settings import PRESETS

    selection = HeadSelection.parse(str(PRESETS / "sd3-paper-dark.json"))
    with pytest.raises(HeadSelectionError, match=r"this preset is for stabilityai/stable-diffusion-3-medium-diffusers"
                       r" \(24 layers x 24 heads\); the loaded model has 6 layers x 4 heads"):  # fmt: skip
        selection.validate(LAYOUT)
    selection.validate({"attn": {layer: 24 for layer in range(24)}, "attn2": {}})


def test_heads_then_preset_name_then_path(tmp_path):
    from tools.settings import PRESETS, resolve_heads

    long_heads = ", ".join(f"L{i}H{j}" for i in range(10) for j in range(10))
    assert len(long_heads) > 250 and resolve_heads(long_heads) == long_heads
    assert resolve_heads("sd3-paper-dark") == str(PRESETS / "sd3-paper-dark.json")
    assert resolve_heads("my/preset.json") == "my/preset.json"
    assert resolve_heads("L1") == "L1"  # notation with a mistake: parse names it
    with pytest.raises(HeadSelectionError, match="'sd3-paper-drak' is neither heads .* nor a preset name"):
        resolve_heads("sd3-paper-drak")
    with pytest.raises(HeadSelectionError, match="preset file .* cannot be read|does not exist"):
        HeadSelection.parse("/" + "x" * 300 + ".json")
