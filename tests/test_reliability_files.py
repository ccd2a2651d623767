"""Every preset file read alone: a broken one is reported by its name and reason and skipped, in the CLI's list
and show and in the demo's preset menu and upload; printed preset text has its control characters escaped.
(Broken model folders: tests/test_fuzz.py, BROKEN_MODELS.)"""

from __future__ import annotations

import shutil

import pytest

import tools.settings as settings
from guidance.heads import HeadSelection, HeadSelectionError, printable
from tools.cli import main

# name -> (file text, words of the reason)
BROKEN_PRESETS = {
    "not-json": ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes"),
    "group-string": ('{"groups": ["L0H0"]}', "groups[0] must be an object with a 'heads' list"),
    "nan": ('{"groups": [{"heads": ["L1H1"], "scale": NaN}]}', "groups[0].scale=nan is not JSON (NaN)"),
    "long-int": ('{"groups": [{"heads": ["L1H1"]}], "version": ' + "7" * 5000 + "}", "(5000 digits) is too long"),
    "deep": ("[" * 100_000, "is not valid JSON: nested too deeply"),
    "nested-scores": ('{"groups": [{"heads": ["L1H1"]}], "scores": ' + "[" * 17 + "]" * 17 + "}", "nested deeper"),
    "not-utf8": (b'{"groups": "\xff"}', "is not UTF-8 text"),
    "too-big": ('{"groups": [], "source": "' + "x" * (1024 * 1024) + '"}', "is larger than 1024 KiB"),
    "empty": ("", "is not valid JSON"),
}  # fmt: skip


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """A presets folder: the shipped presets, every broken kind, a link to /etc/passwd and one to a preset
    outside the folder; `settings.PRESETS` points to it."""
    folder = tmp_path / "presets"
    shutil.copytree(settings.PRESETS, folder)
    for name, (text, _) in BROKEN_PRESETS.items():
        (folder / f"{name}.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    (folder / "passwd.json").symlink_to("/etc/passwd")
    outside = tmp_path / "outside.json"
    shutil.copy(settings.PRESETS / "sd3-paper-dark.json", outside)
    (folder / "outside.json").symlink_to(outside)
    (folder / "fits.json").write_text('{"groups": [{"heads": ["L1H1"]}]}')  # fits the tiny SD3 (4 x 4)
    (folder / "inside.json").symlink_to(folder / "fits.json")  # a link within the folder is fine
    monkeypatch.setattr(settings, "PRESETS", folder)
    return folder


LINKS = {
    "passwd": "a link out of the presets folder (to '/etc/passwd')",
    "outside": "a link out of the presets",
}


def test_presets_list_shows_each_broken_file_with_its_reason_and_the_others(presets, capsys):
    assert main(["presets", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name, expect in [*((n, e) for n, (_, e) in BROKEN_PRESETS.items()), *LINKS.items()]:
        row = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
        assert "broken (not usable)" in lines[row], name
        reason = " ".join(line.strip() for line in lines[row + 1 : row + 4])
        assert f"{name}.json" in reason and expect in reason, (name, reason)
    usable = {
        line.split()[0] for line in lines[1:] if line and not line.startswith(" ") and "broken" not in line
    }
    assert {"sd3-paper-dark", "toy-sd3-dark", "fits", "inside"} <= usable
    assert "root:" not in out  # nothing of the linked file is shown


@pytest.mark.parametrize("name", [*BROKEN_PRESETS, *LINKS])
def test_presets_show_of_a_broken_file_exits_2_naming_it_and_why(presets, name, capsys):
    assert main(["presets", "show", name]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{name}.json" in err
    assert (BROKEN_PRESETS[name][1] if name in BROKEN_PRESETS else LINKS[name]) in err, err


def test_generate_with_a_linked_preset_name_is_refused_before_loading(presets, capsys, tmp_path):
    assert main(["generate", "x", "--pag-heads", "passwd", "--out", str(tmp_path / "out")]) == 2
    assert "a link out of the presets folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_preset_text_with_terminal_escapes_is_printed_escaped(presets, capsys):
    (presets / "escapes.json").write_text(
        '{"groups": [{"heads": ["L1H1"]}], "model": "m\\u001b[2J", "source": "s\\u001b]0;title\\u0007", '
        '"description": "d\\u202e\\u009b31m"}'
    )
    assert main(["presets", "show", "escapes"]) == 0
    shown = capsys.readouterr().out
    assert main(["presets", "list"]) == 0
    listed = capsys.readouterr().out
    for out in (shown, listed):
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\u202e" not in out
        assert "m\\x1b[2J" in out and "s\\x1b]0;title\\x07" in out
    assert "d\\u202e\\x9b31m" in shown


def test_printable_escapes_controls_but_keeps_text():
    assert printable("a\tb\nc é 頭") == "a\tb\nc é 頭"
    assert printable("\x1b[2J\x00\x7f\x9b\udcff\u2066") == "\\x1b[2J\\x00\\x7f\\x9b\\udcff\\u2066"


@pytest.mark.parametrize(
    "text, expect",
    [
        ('{"groups": [{"heads": ["L1H1"], "scale": Infinity}]}', "groups[0].scale=inf is not JSON (Infinity)"),
        ('{"groups": [{"heads": [{"layer": ' + "1" * 70 + ', "head": 0}]}]}', "groups[0].heads[0].layer="),
        ('{"groups": [{"heads": ["L1H1"]}], "search": ' + '{"a": ' * 17 + "1" + "}" * 17 + "}", "search.a.a.a"),
    ],
)  # fmt: skip
def test_preset_json_is_strict_and_names_the_field(tmp_path, text, expect):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(HeadSelectionError, match="pag_heads: preset file") as raised:
        HeadSelection.parse(str(tmp_path / "p.json"))
    assert expect in str(raised.value)


# -- the demo ----------------------------------------------------------------------------------------------------


@pytest.fixture
def demo(presets, monkeypatch, tiny_folder):
    import app as demo_app
    from fixtures.tiny import TINY_PIPELINES
    from pipelines.headhunter import HeadHunterPipeline

    monkeypatch.setattr(demo_app, "PRESETS", presets)
    pipe = HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]())
    return demo_app.Demo(pipe, tiny_folder("sd3"), demo_app.Limits(max_steps=4, max_size=64, queue_size=4))


def test_demo_starts_with_broken_presets_named_in_the_menu_and_not_selectable(demo):
    import app as demo_app

    assert set(demo.broken_presets) == {*BROKEN_PRESETS, *LINKS}
    assert not set(demo.presets) & set(demo.broken_presets)
    assert {"fits", "inside"} <= set(demo.presets)
    note = demo.preset_note()
    assert "Not usable (broken files)" in note and "\x1b" not in note
    for name in [*BROKEN_PRESETS, *LINKS]:
        assert f"{name}: {name}.json" in note
    with pytest.raises(demo_app.InputError, match="Preset"):
        demo.preset_inputs("not-json")
    demo_app.build_app(demo)  # the menu is built with the note


@pytest.mark.parametrize(
    "text, expect",
    [
        ("[" * 100_000, "is not valid JSON: nested too deeply"),
        ('{"groups": [{"heads": ["L1H1"], "scale": NaN}]}', "groups[0].scale=nan is not JSON (NaN)"),
        ('{"groups": ["L0H0"]}', "groups[0] must be an object"),
        ('{"groups": [{"heads": ["L1H1"]}], "x": ' + "9" * 5000 + "}", "(5000 digits) is too long"),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
)  # fmt: skip
def test_an_uploaded_preset_goes_through_the_same_checks(demo, tmp_path, text, expect):
    import app as demo_app

    path = tmp_path / "upload.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(demo_app.InputError) as raised:
        demo.read_preset_file(str(path))
    assert expect in str(raised.value) and "Preset file" in str(raised.value)


def test_pipeline_options_in_model_index_are_not_read_as_components(tiny_folder):
    """SD1.x folders record `requires_safety_checker: false` beside their components (every saved SD1.5 does); the
    folder check took it for a malformed component and refused every SD1.x model folder."""
    from pipelines.headhunter import HeadHunterPipeline
    from pipelines.loading import check_components, read_model_index

    folder = tiny_folder("sd15")
    index = read_model_index(folder)
    assert index["requires_safety_checker"] is False
    check_components(folder, index)
    assert type(HeadHunterPipeline.from_pretrained(folder)).__name__ == "HeadHunterSDPipeline"
