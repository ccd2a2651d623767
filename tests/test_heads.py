"""Head selections: notation, tuples, JSON presets, and errors that name the parameter and the entry."""

import json
import math

import pytest

from guidance.heads import HeadEntry, HeadSelection, HeadSelectionError

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
        ("L1H10=1.5", r"L1H10=1.5: strength u=1.5 must be a number in \[0, 1\]"),
        ("L1H10=nan", "strength u=nan"),
        ("L-1H2", r"layer index -1 must be an integer in 0\.\.99999"),
        ([(1.5, 2)], "layer index 1.5 must be an integer in 0"),
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
