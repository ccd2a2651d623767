"""The Gradio demo, launched on localhost and driven with gradio_client (and a headless browser)."""

import json

import pytest
from PIL import Image


def test_generate_returns_two_images_with_parameters(client):
    guided, plain, note = client.predict("a red circle", api_name="/generate")
    images = [Image.open(guided), Image.open(plain)]
    assert images[0].size == (32, 32)
    params = [json.loads(i.text["headhunter"]) for i in images]
    assert params[0]["pag_heads"] == "L2H1, L3H0" and "pag_heads" not in params[1]
    assert params[0]["seed"] == params[1]["seed"] == 0
    assert images[0].text["parameters"].startswith("a red circle\n")
    assert "seed 0" in note


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(steps=0), "Steps: 0 is not allowed"),
        (dict(size=33), "Size: 33 is not allowed; use a multiple of 4"),
        (dict(size=128), "Size: 128 is not allowed"),
        (dict(heads="L1X2"), "Heads: cannot read 'L1X2'"),
        (dict(heads="L9H0"), "Heads: entry L9H0: layer 9 is out of range"),
        (dict(prompt=""), "Prompt: write a prompt"),
        (dict(preset="../../etc/passwd"), "is not in the list of choices"),  # Gradio refuses it first
    ],
)
def test_invalid_inputs_name_the_input(client, kwargs, message):
    from gradio_client.exceptions import AppError

    prompt = kwargs.pop("prompt", "a red circle")
    with pytest.raises(AppError, match=message.replace("(", r"\(")):
        client.predict(prompt, api_name="/generate", **kwargs)


def test_search_tab_returns_heatmap_and_preset(client):
    heatmap, report, preset, heads = client.predict(
        "saturation", "a red circle", 1, 2, 1, 2, True, api_name="/search"
    )
    assert Image.open(heatmap).size == (40 + 4 * 24, 40 + 4 * 24)
    data = json.loads(open(preset).read())
    assert len(data["groups"][0]["heads"]) == 2 and heads.count("L") == 2
    assert "round 0" in report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("saturation", "", 1, 2, 1, 2, False), "Prompts: give 1 to 8 prompts"),
        (("saturation", "a", 9, 2, 1, 2, False), "Seeds: 9 is not allowed"),
        (("saturation", "a", 1, 0, 1, 2, False), "k: 0 is not allowed"),
        (("saturation", "a", 1, 2, 1, 50, False), "Steps: 50 is not allowed"),
    ],
)
def test_search_tab_errors_name_the_input(client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/search")
