"""The foundation: tiny offline pipelines load through from_pretrained and generate; no network is reached."""

import socket

import numpy as np
import pytest
import torch

from fixtures.tiny import TINY_PIPELINES, save_and_reload
from pipelines.loading import absent_components, model_index
from pipelines.tokenizers import clip_tokenizer, t5_tokenizer


@pytest.mark.parametrize("name", sorted(TINY_PIPELINES))
def test_tiny_pipeline_roundtrip_and_generate(name, tmp_path):
    built = TINY_PIPELINES[name]()
    pipe = save_and_reload(built, tmp_path / name)
    assert type(pipe) is type(built)
    image = pipe(
        "a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 32, 32, 3)
    assert np.isfinite(image).all()
    # Same weights after the round trip: same image from the same seed.
    again = built(
        "a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    np.testing.assert_allclose(image, again, atol=1e-5)  # reloaded weights: same image up to float noise


def test_absent_components_are_none(tmp_path):
    pipe = TINY_PIPELINES["sd3"]()
    pipe.save_pretrained(tmp_path)
    absent = absent_components(type(pipe), model_index(tmp_path))
    assert absent["text_encoder_3"] is None and absent["tokenizer_3"] is None
    assert "transformer" not in absent


def test_model_index_names_missing_file(tmp_path):
    from pipelines.loading import ModelFolderError

    with pytest.raises(ModelFolderError, match="is a folder without model_index.json"):
        model_index(tmp_path)
    with pytest.raises(ModelFolderError, match="no such folder"):
        model_index(tmp_path / "missing")


def test_tokenizers_keep_known_words_whole():
    assert clip_tokenizer().tokenize("a red circle") == ["a</w>", "red</w>", "circle</w>"]
    assert clip_tokenizer().tokenize("zq") == ["z", "q</w>"]
    # Every listed word is one token, whatever merges other words made first (e.g. "ri" from "right").
    from pipelines.tokenizers import BASE_WORDS

    tok = clip_tokenizer()
    assert [w for w in BASE_WORDS if len(tok.tokenize(w)) != 1] == []
    assert t5_tokenizer().tokenize("a blue square") == ["\u2581a", "\u2581blue", "\u2581square"]


def test_network_guard_refuses_outside_addresses(no_network):
    from conftest import NETWORK_ATTEMPTS

    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match="blocked"):
        s.connect(("93.184.216.34", 443))
    assert NETWORK_ATTEMPTS, "the guard must record the attempt"
    NETWORK_ATTEMPTS.clear()  # this attempt was the point of the test
