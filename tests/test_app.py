"""The Gradio demo, launched on localhost and driven with gradio_client; its pieces tested alone."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import app as demo_app
from guidance.heads import HeadSelection

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
    head_map, report, preset, heads, w = client.predict(
        "saturation", "a red circle", 1, 2, 1, 2, True, api_name="/search"
    )
    image = Image.open(head_map)
    assert image.width > 36 + 2 * 22 + 60  # grid plus a colour bar with its labels
    assert "Round 1" in report and "Round 0" not in report
    if preset is None:  # no round beat the unguided image: nothing to use, and the report says so
        assert "No round beat the unguided image" in report and heads == ""
        return
    data = json.loads(Path(preset).read_text())
    assert heads == str(HeadSelection.from_json(data)) and "=0.5" in heads
    assert {h["strength"] for g in data["groups"] for h in g["heads"]} == {0.5}
    assert data["groups"][0]["scale"] == w


def test_a_round_that_does_not_beat_the_best_earlier_one_is_not_adopted():
    history = [
        {"round": 0, "added": ["L0H1"], "selected": [(0, 1)], "score": 0.6},
        {"round": 1, "added": ["L1H0"], "selected": [(0, 1), (1, 0)], "score": 0.55},
        {"round": 2, "added": ["L2H0"], "selected": [(0, 1), (1, 0), (2, 0)], "score": 0.7, "adopted": False},
    ]
    lines, selected = demo_app.search_rounds(history, baseline=0.5)
    assert selected == [(0, 1)]
    assert lines[0].startswith("Round 1") and "(adopted)" in lines[0]
    assert "not adopted" in lines[1] and "not adopted" in lines[2]
    assert demo_app.search_rounds(history[:1], baseline=0.9)[1] == []


def test_head_map_has_a_symmetric_colour_bar_and_a_title(tmp_path):
    scores = {(0, 0): 0.5, (0, 1): 0.7, (1, 0): 0.4, (1, 1): 0.5}
    path = demo_app.head_map_png(scores, 0.5, "saturation", tmp_path / "map.png")
    image = Image.open(path).convert("RGB")
    bar_x, top, height = 36 + 2 * 22 + 24 + 8, 48, 120
    assert image.getpixel((bar_x, top)) == (255, 0, 0)  # +span: red
    assert image.getpixel((bar_x, top + height - 1)) == (0, 0, 255)  # -span: blue
    assert image.getpixel((bar_x, top + height // 2))[1] > 250  # 0: white
    assert image.getpixel((36 + 22 + 5, 48 + 5)) == (255, 0, 0)  # L0H1 is the largest gain
    assert min(image.crop((0, 0, image.width, 30)).convert("L").getdata()) < 100  # a title is drawn


def test_toy_vocabulary_and_examples_come_from_the_model_folder():
    words = demo_app.vocabulary(ROOT / "assets" / "toy-sd3")
    assert {"red", "circle", "square", "left", "top", "small", "outlined"} <= set(words)
    assert not {"ack", "ellow", "quare"} & set(words)  # pieces of words are not listed
    examples = demo_app.examples_for(words)
    assert examples and all(set(e.replace(",", "").split()) <= set(words) | {"a"} for e in examples)
    assert demo_app.examples_for([]) == list(demo_app.EXAMPLE_PROMPTS)


def _fake_pipe(patch=2, table=16, vae=8, sample=8):
    config = SimpleNamespace(patch_size=patch, pos_embed_max_size=table)
    return SimpleNamespace(
        transformer=SimpleNamespace(config=config), vae_scale_factor=vae, default_sample_size=sample
    )


def test_sizes_follow_the_model():
    toy = demo_app.model_sizes(_fake_pipe(), {"height": 64, "width": 64}, 1024)
    assert toy.check("Width", 64, 64) == 64
    with pytest.raises(
        demo_app.gr.Error, match="Height: 128 is not allowed; this toy model makes 64x64 images only"
    ):
        toy.check("Height", 128, 64)
    real = demo_app.model_sizes(_fake_pipe(table=192), {}, 4096)
    assert (real.high, real.multiple, real.native) == (192 * 2 * 8, 16, (64, 64))
    with pytest.raises(
        demo_app.gr.Error, match="Width: 3088 is not allowed; use a multiple of 16 from 16 to 3072"
    ):
        real.check("Width", 3088, 64)


def test_display_name_never_shows_an_absolute_path(tmp_path):
    assert demo_app.display_name(ROOT / "assets" / "toy-sd3") == "assets/toy-sd3"
    assert demo_app.display_name(tmp_path / "my-model") == "my-model"
    assert demo_app.display_name("stabilityai/stable-diffusion-3-medium-diffusers").startswith("stabilityai/")


def test_library_noise_is_dropped_at_its_source():
    """app.py uses the CLI's console (pipelines/console.py): the torchvision notices always, the T5 truncation
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

    with caplog.at_level(logging.WARNING, logger="headhunter.app"), pytest.raises(AppError, match="Steps: 0"):
        client.predict("a red circle", steps=0, api_name="/generate")
    assert [r.getMessage() for r in caplog.records if r.name == "headhunter.app"] == [
        "refused: Steps: 0 is not allowed; use a whole number from 1 to 4"
    ]
    assert "Traceback" not in capfd.readouterr().err


def test_api_endpoints_and_outputs_are_named(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert set(info["named_endpoints"]) == {"/generate", "/search", "/novel_views"}
    assert not info["unnamed_endpoints"]
    for endpoint in info["named_endpoints"].values():
        assert all(r["label"] and not r["label"].startswith("value_") for r in endpoint["returns"])


def test_novel_views_without_weights_say_so(tmp_path):
    app = demo_app

    with pytest.raises(app.InputError, match="Novel views need the UpFusion weights"):
        app.NovelViews(tmp_path / "missing").run(None, "views", "90, 0", 12, 15, 2, 3, 0)


def test_novel_views_with_the_shipped_toy_model(tmp_path):
    """The tab renders one view per camera and an orbit GIF with the shipped toy UpFusion model."""
    app = demo_app

    views = app.NovelViews()
    if views.unavailable():
        pytest.skip(views.unavailable())
    image = tmp_path / "front.png"
    Image.new("RGB", (32, 32), "red").save(image)
    gallery, gif = views.run([str(image)], "views", "90, 0; 180, 10", 12, 15, 2, 2, 0)
    assert [caption for _, caption in gallery] == ["azimuth 90°, elevation 0°", "azimuth 180°, elevation 10°"]
    assert gif is None and gallery[0][0].size == (32, 32)
    gallery, gif = views.run([str(image)], "orbit", "", 3, 15, 2, 2, 0)
    assert len(gallery) == 3 and Path(gif).is_file()
