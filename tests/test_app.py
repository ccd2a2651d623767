"""The Gradio demo, launched on localhost and driven with gradio_client; its pieces tested alone."""

import json
import logging
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import app as demo_app
from guidance.heads import HeadSelection
from tools import demo as tools

ROOT = Path(__file__).resolve().parent.parent
HEADS = "L0H1=0.5; style: L1H0"


def _png(path) -> tuple[dict, str]:
    image = Image.open(path)
    return json.loads(image.text["headhunter"]), image.text["parameters"]


def test_generate_shows_comparison_difference_gallery_and_pngs(client):
    comparison, diff, files, note, gallery = client.predict(
        "a red circle", heads=HEADS, seed=7, api_name="/generate"
    )
    shown = [Image.open(p) for p in comparison]
    assert [i.size for i in shown] == [(512, 512)] * 2  # 32 px enlarged 16x, nearest neighbour
    assert Image.open(diff).size == (512, 512)
    guided, plain = (_png(f["path"] if isinstance(f, dict) else f)[0] for f in files)
    assert guided["seed"] == plain["seed"] == 7 and guided["guidance"] == "softpag"
    assert plain["guidance"] == "none" and "pag_heads" not in plain
    assert Image.open(files[0]["path"] if isinstance(files[0], dict) else files[0]).size == (32, 32)
    assert "seed 7" in note and "shown at 16x, native 32x32 px" in note
    assert len(gallery) >= 1


def test_metadata_round_trip_with_a_preset_scale_that_is_not_the_default(server, client):
    """A preset with w=1.5 and its own u per head: every field read back from the PNG is what guided it."""
    _, demo = server
    demo.presets["test-preset"] = HeadSelection.parse(
        {
            "groups": [
                {
                    "name": "style",
                    "scale": 1.5,
                    "heads": [{"layer": 0, "head": 1, "strength": 0.25}, {"layer": 1, "head": 0}],
                }
            ]
        }
    )
    heads, w = demo.preset_inputs("test-preset")
    assert (heads, w) == ("style: L0H1=0.25, L1H0=1", 1.5)
    try:
        *_, files, note, _ = client.predict(
            "a red circle",
            seed=3,
            steps=2,
            pag_scale=w,
            pag_identity="image",
            pag_start=0.1,
            pag_stop=0.9,
            preset="test-preset",
            heads=heads,
            api_name="/generate",
        )
        edited = client.predict(
            "a red circle",
            seed=3,
            steps=2,
            pag_scale=2.0,
            preset="test-preset",
            heads=heads,
            api_name="/generate",
        )[2]
    finally:
        del demo.presets["test-preset"]
    record, parameters = _png(files[0]["path"] if isinstance(files[0], dict) else files[0])
    assert record["pag_groups"] == [
        {
            "name": "style",
            "scale": 1.5,
            "heads": [
                {"layer": 0, "head": 1, "attention": "attn", "u": 0.25},
                {"layer": 1, "head": 0, "attention": "attn", "u": 1.0},
            ],
        }
    ]
    assert record["pag_heads"] == heads and record["pag_preset"] == "test-preset"
    assert (record["pag_identity"], record["pag_start"], record["pag_stop"]) == ("image", 0.1, 0.9)
    assert (record["seed"], record["num_inference_steps"], record["guidance_scale"]) == (3, 2, 5.0)
    assert record["model"] == "sd3" and "/" not in record["model"]  # the name, not the server's path
    assert "pag_group_scales: style=1.5" in parameters and "seed: 3" in parameters
    assert "preset: test-preset" in note
    changed, _ = _png(edited[0]["path"] if isinstance(edited[0], dict) else edited[0])
    assert changed["pag_preset"] == "custom" and changed["pag_groups"][0]["scale"] == 2.0


def test_reuse_gives_back_the_inputs_of_a_gallery_item(server):
    _, demo = server
    record = {
        "prompt": "a red circle",
        "seed": 5,
        "num_inference_steps": 2,
        "width": 32,
        "height": 32,
        "guidance_scale": 4.0,
        "guidance": "softpag",
        "pag_heads": "L0H1=0.5",
        "pag_preset": "custom",
        "pag_groups": [{"name": "heads", "scale": 1.25, "heads": []}],
        "pag_identity": "image",
        "pag_start": 0.0,
        "pag_stop": 0.5,
    }
    values = demo.reuse([{"image": "x.png", "record": record}], 0)
    shown = ("a red circle", "", 5, 2, 32, 32, 4.0, 1.25, "image", 0.0, 0.5, 1, "cond", "custom", "L0H1=0.5")
    assert values == shown
    record.update(pag_every=3, pag_branch="uncond")
    assert demo.reuse([{"image": "x.png", "record": record}], 0)[11:13] == (3, "uncond")
    with pytest.raises(demo_app.gr.Error, match="Gallery: click an image"):
        demo.reuse([], None)


def test_search_reports_rounds_from_one_and_use_copies_heads_u_and_w(client):
    head_map, report, preset, heads, w, status = client.predict(
        "saturation", "a red circle", 1, 2, 1, 2, True, api_name="/search"
    )
    image = Image.open(head_map)
    assert image.width > 36 + 2 * 22 + 60  # grid plus a colour bar with its labels
    assert "Round 1" in report and "Round 0" not in report and "Profile **ours**" in report
    assert status.startswith("Done in") and "images made" in status
    if preset is None:  # no round beat the unguided image: nothing to use, and the report says so
        assert "No round beat the unguided image" in report and heads == ""
        return
    data = json.loads(Path(preset).read_text())
    assert heads == str(HeadSelection.from_json(data)) and "=0.5" in heads
    assert {h["strength"] for g in data["groups"] for h in g["heads"]} == {0.5}
    assert data["groups"][0]["scale"] == w


def test_the_paper_profile_fills_k_and_rounds_and_turns_cfg_off(server):
    _, demo = server
    assert demo.profile_fields("paper")[:2] == (3, 5)
    settings = demo.search_settings("paper", ["a red circle"], 1, 3, 5, 2)
    assert (settings.guidance_scale, settings.validation, settings.early_stop) == (0.0, 0.0, False)
    about = tools.profile_text(settings)
    assert "Profile **paper**" in about and "CFG off" in about and "every round is adopted" in about


def test_search_progress_is_reported_while_it_runs(server):
    """The generator yields the progress about twice a second: the phase, images made of planned, the step."""
    _, demo = server
    outputs = list(demo.search("saturation", "a red circle", 2, 1, 1, 2, True, progress=None))
    running = [o[-1] for o in outputs[:-1]]
    assert any(re.search(r"Head map: .* \d+ of \d+ images made .* step \d of 2", s) for s in running), running
    assert outputs[-1][-1].startswith("Done in")


def test_stop_ends_a_search_at_its_next_step_and_says_so(server):
    _, demo = server
    search = demo.search("saturation", "a red circle", 2, 1, 1, 2, True, progress=None)
    first = next(search)
    demo.stop_search(None)
    *_, last = search
    assert last[-1].startswith("Stopped after") and "Stopped" not in first[-1]
    assert last[2] is None  # no preset from a stopped search


def test_a_round_whose_guard_failed_says_why(server, tmp_path):
    """An absolute guard no image can pass: every score is -inf; the report says what the guard averaged and the
    limit it missed, and the head map marks the failed heads grey with a cross (not "hurts most", blue)."""
    from guidance.objectives import Constrained, get_objective

    _, demo = server
    objective = Constrained(get_objective("saturation"), get_objective("brightness"), min_score=2.0)
    settings = demo.search_settings("ours", ["a red circle"], 2, 1, 1, 2)
    run = tools.SearchRun(demo.search_pipe, objective, settings, True, tmp_path, 0.5, threading.Event())
    run.run()
    assert run.state == "done", run.error
    report = "\n".join(run.report)
    assert "Round 1: added" in report and "-inf (guard failed)" in report
    assert "not adopted: the guard objective failed" in report
    assert re.search(
        r"Guard: the guard brightness averaged 0\.\d+ on the search pairs, below its limit 2 ", report
    )
    assert "grey with a cross" in report
    # The demo's head map is the library's (`guidance.search.heatmap`, as the command's headmap.png), titled
    # with the objective's name: L0H0's cell is grey, hatched and crossed, not the blue of "hurts most".
    from guidance.search import GUARD_FAILED_FILL, GUARD_FAILED_MARK, MAP_LEFT, MAP_TOP

    image = Image.open(run.head_map).convert("RGB")
    cell = {image.getpixel((MAP_LEFT + i, MAP_TOP + j)) for i in range(32) for j in range(32)}
    assert GUARD_FAILED_FILL in cell and GUARD_FAILED_MARK in cell and (0, 0, 255) not in cell
    assert min(image.crop((8, 24, 300, 40)).convert("L").getdata()) < 100  # the title's second line
    marks = {
        image.getpixel((i, j))
        for i in range(MAP_LEFT, image.width)
        for j in range(MAP_TOP + 200, image.height)
    }
    assert GUARD_FAILED_FILL in marks and GUARD_FAILED_MARK in marks  # the legend's guard-failed mark


def test_a_round_that_does_not_beat_the_best_earlier_one_is_not_adopted():
    history = [
        {"round": 0, "added": ["L0H1"], "selected": [(0, 1)], "score": 0.6},
        {"round": 1, "added": ["L1H0"], "selected": [(0, 1), (1, 0)], "score": 0.55},
        {"round": 2, "added": ["L2H0"], "selected": [(0, 1), (1, 0), (2, 0)], "score": 0.7, "adopted": False},
    ]
    lines, selected = tools.search_rounds(history, baseline=0.5)
    assert selected == [(0, 1)]
    assert lines[0].startswith("Round 1") and lines[0].endswith("; adopted")
    assert "not adopted" in lines[1] and "not adopted" in lines[2]
    assert tools.search_rounds(history[:1], baseline=0.9)[1] == []


def test_the_generate_tab_head_map_has_a_legend(server):
    _, demo = server
    image = Image.open(demo.heads_map("L0H1=0.5; style: L1H0")).convert("RGB")
    left, top, cell = 40, 30, 18
    first, style = tools.GROUP_COLOURS[:2]
    assert image.getpixel((left + cell + 5, top + 5)) not in ((255, 255, 255), first)  # L0H1: paler, u = 0.5
    assert image.getpixel((left + 5, top + cell + 5)) == style  # L1H0 at u = 1
    assert image.getpixel((left + 5, top + 5)) == (255, 255, 255)  # untouched
    legend = set(image.crop((0, top + 4 * cell + 24, image.width, image.height)).getdata())
    assert {first, style} <= legend  # one swatch per group
    assert demo.heads_map("L9H9") is None  # unreadable while typing: no map, no error


def test_head_settings_without_heads_are_not_silently_ignored(client):
    note = client.predict(
        "a red circle", heads="", pag_scale=4, pag_start=0.2, steps=1, api_name="/generate"
    )[3]
    assert "no heads selected" in note
    assert "No heads are chosen, so Head guidance w = 4, Start = 0.2 have no effect" in note
    note = client.predict("a red circle", heads="", steps=1, api_name="/generate")[3]
    assert "No heads are chosen" not in note  # all at their defaults: nothing to say


def test_stop_is_shown_as_stopped_not_as_an_error(server):
    _, demo = server
    outputs = demo.generate(
        "a red circle", seed=1, steps=3, heads="L0H0", progress=lambda *a, **k: demo.stop(None)
    )
    assert outputs[3].startswith("**Stopped**") and "nothing made" in outputs[3]
    again = demo.generate("a red circle", seed=1, steps=1, heads="L0H0", progress=None)
    assert "seed 1 · heads L0H0" in again[3]  # the next run is not stopped


def test_the_comparison_opens_on_the_guided_image(server):
    _, demo = server
    app = demo_app.build_app(demo)
    slider = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "comparison")
    assert slider.slider_position == 100  # the whole guided image, not a half-and-half composite


def test_toy_vocabulary_counts_a_and_every_example_shown_works():
    """The vocabulary and examples come from the grammar the toy model's folder records: "a" is a word, and
    every example shown names objects of the toy world's colours and shapes in pairings seen in training."""
    from toyworld.scenes import COLORS, SHAPES, held_out_pairs, parse_caption

    words = tools.prompt_help(ROOT / "assets" / "toy-sd3")
    assert {"a", "red", "circle", "square", "left", "top", "small", "outlined"} <= set(words.words)
    assert not {"ack", "ellow", "quare", "b", "x", "orange", "star"} & set(words.words)
    assert len(words.examples) >= 5 and words.examples == words.grammar.examples  # every recorded one works
    for example in words.examples:
        assert not words.problems(example), example
        scene = parse_caption(example)
        assert all(o.color in COLORS and o.shape in SHAPES for o in scene.objects), example
        assert not {(o.color, o.shape) for o in scene.objects} & held_out_pairs(0), example
    assert words.problems("an orange star")[0] == "'orange' (not a word it knows)"
    assert "white" in words.problems("a white square")[0]  # a background colour, never an object's


def test_without_a_recorded_grammar_the_tokenizer_words_count_a(tmp_path):
    """A model folder without a grammar: its tokenizer's whole words, "a" among them (before, "a" was dropped
    and 5 of the 6 examples were hidden); the fallback examples avoid the toy's held-out pairings too."""
    from toyworld.scenes import held_out_pairs, parse_caption

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_bytes(
        (ROOT / "assets/toy-sd3/tokenizer/vocab.json").read_bytes()
    )
    words = tools.prompt_help(tmp_path)
    assert words.grammar is None and "a" in words.words and not {"b", "ack"} & set(words.words)
    assert words.examples == tools.EXAMPLE_PROMPTS
    for example in words.examples:
        assert not {(o.color, o.shape) for o in parse_caption(example).objects} & held_out_pairs(0), example
    assert words.problems("an orange star") == [
        "'orange' (not a word it knows)",
        "'star' (not a word it knows)",
    ]
    assert tools.prompt_help(tmp_path / "missing").problems("anything at all") == []  # open vocabulary


def test_what_the_model_was_not_trained_on_is_named_before_the_image_is_looked_at(server):
    _, demo = server
    demo.words, words = tools.prompt_help(ROOT / "assets" / "toy-sd3"), demo.words
    try:
        note = demo.generate("an orange star", seed=1, steps=1, progress=None)[3]
    finally:
        demo.words = words
    assert "⚠ Prompt: this model was not trained on 'orange' (not a word it knows); 'star'" in note


def _fake_pipe(patch=2, table=16, vae=8, sample=8):
    config = SimpleNamespace(patch_size=patch, pos_embed_max_size=table)
    return SimpleNamespace(
        transformer=SimpleNamespace(config=config), vae_scale_factor=vae, default_sample_size=sample
    )


def test_sizes_follow_the_model():
    toy = tools.model_sizes(_fake_pipe(), {"height": 64, "width": 64}, 1024)
    assert toy.check("Width", 64, 64) == 64
    with pytest.raises(
        tools.DemoInputError, match="Height: 128 is not allowed; this toy model makes 64x64 images only"
    ):
        toy.check("Height", 128, 64)
    real = tools.model_sizes(_fake_pipe(table=192), {}, 4096)
    assert (real.high, real.multiple, real.native) == (192 * 2 * 8, 16, (64, 64))
    with pytest.raises(
        tools.DemoInputError, match="Width: 3088 is not allowed; use a multiple of 16 from 16 to 3072"
    ):
        real.check("Width", 3088, 64)


def test_display_name_never_shows_an_absolute_path(tmp_path):
    assert tools.display_name(ROOT / "assets" / "toy-sd3") == "assets/toy-sd3"
    assert tools.display_name(tmp_path / "my-model") == "my-model"
    assert tools.display_name("stabilityai/stable-diffusion-3-medium-diffusers").startswith("stabilityai/")


def test_library_noise_is_dropped_at_its_source():
    """app.py uses the CLI's console (tools/console.py): the torchvision notices always, the T5 truncation
    notice only at a length a model folder records (the toy models: 1, marked when the demo loads one)."""

    def passes(library: str, message: str) -> bool:
        record = logging.LogRecord(f"{library}.x", logging.WARNING, __file__, 1, message, None, None)
        handlers = logging.getLogger(library).handlers
        return bool(handlers) and all(h.filter(record) for h in handlers)

    demo_app.before_loading(
        1
    )  # what Demo / main do for the toy SD3 (its folder records max_sequence_length 1)
    assert not passes("transformers", "`CLIPImageProcessor` requires torchvision (not installed); ...")
    truncated = (
        "The following part of your input was truncated because `max_sequence_length` is set to  {} tokens"
    )
    assert not passes("diffusers", truncated.format(1))
    assert passes("diffusers", truncated.format(77))  # a real model's cut prompt is still reported
    assert passes("diffusers", "a message that matters") and passes("transformers", "another one")


def test_a_refused_input_is_one_log_line_without_traceback(client, caplog, capfd):
    from gradio_client.exceptions import AppError

    with (
        caplog.at_level(logging.WARNING, logger="headhunter.app"),
        pytest.raises(AppError, match=r"Steps=0 is out of range; allowed: an integer in \[1, 4\]"),
    ):
        client.predict("a red circle", steps=0, api_name="/generate")
    assert [r.getMessage() for r in caplog.records if r.name == "headhunter.app"] == [
        "refused: Steps=0 is out of range; allowed: an integer in [1, 4]"
    ]
    assert "Traceback" not in capfd.readouterr().err


def test_api_endpoints_and_outputs_are_named(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert set(info["named_endpoints"]) == {"/generate", "/search", "/structured", "/novel_views"}
    assert not info["unnamed_endpoints"]
    for endpoint in info["named_endpoints"].values():
        assert all(r["label"] and not r["label"].startswith("value_") for r in endpoint["returns"])


def test_novel_views_without_weights_say_so(tmp_path):
    app = demo_app

    with pytest.raises(app.InputError, match="Novel views need the UpFusion weights"):
        app.NovelViews(tmp_path / "missing").run(None, "views", "90, 0", 12, 15, 2, 3, 0)


def test_novel_views_with_the_shipped_toy_model(tmp_path):
    """The tab renders one view per camera and a turntable with the shipped toy UpFusion model; results are
    enlarged with nearest neighbour and captioned with their native size; the turntable shown plays (an
    enlarged, looping GIF) and the native GIF is offered too."""
    views = demo_app.NovelViews()
    if views.unavailable():
        pytest.skip(views.unavailable())
    image = tmp_path / "front.png"
    Image.new("RGB", (32, 32), "red").save(image)
    gallery, playing, gif = views.run([str(image)], "views", "90, 0; 180, 10", 12, 15, 2, 2, 0)
    assert [caption for _, caption in gallery] == [
        f"azimuth {a}°, elevation {e}° · native 32x32 px, shown 16x" for a, e in ((90, 0), (180, 10))
    ]
    assert playing is None and gif is None and gallery[0][0].size == (512, 512)
    gallery, playing, gif = views.run([str(image)], "orbit", "", 3, 15, 2, 2, 0)
    assert len(gallery) == 3 and Image.open(gif).size == (32, 32)
    shown = Image.open(playing)
    assert (shown.format, shown.n_frames, shown.size, shown.info.get("loop")) == ("GIF", 3, (512, 512), 0)


def test_the_toy_object_picker_fills_and_shows_the_input_views():
    views = demo_app.NovelViews()
    objects = tools.toy_objects()
    assert len(objects) == 8 and all(len(o.views) == 6 for o in objects)
    assert list(views.objects) == [o.label for o in objects]
    files, shown = views.pick(objects[0].label)
    assert [Path(f).read_bytes() for f in files] == [v.read_bytes() for v in objects[0].views]
    assert len(shown) == 6 and shown[0][0].size == (512, 512)
    assert shown[0][1] == "view 1 (reference) · native 32x32 px, shown 16x"
    with pytest.raises(demo_app.InputError, match="Toy object='nope' is not supported; allowed: 'object-1"):
        views.pick("nope")


def test_an_image_over_the_upload_limit_is_refused_by_number(tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "MAX_UPLOAD_BYTES", 4096)
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (16, 16), "red").save(small)
    Image.effect_noise((128, 128), 60).convert("RGB").save(large)
    with pytest.raises(
        tools.DemoInputError, match=r"Images: file 2 is [\d.]+ KiB; allowed: at most 4 KiB per image"
    ):
        tools.read_views([str(small), str(large)])
    with pytest.raises(demo_app.InputError, match="Images: file 2 is"):
        demo_app.NovelViews().run([str(small), str(large)], "views", "90, 0", 2, 15, 1, 2, 0)
