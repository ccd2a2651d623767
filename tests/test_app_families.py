"""The demo's Generate tab on every family `HeadHunterPipeline` loads (tiny random models saved to folders): the
demo loads, knows the model's heads (`guidance.adapters.heads_layout`) and sizes, and makes a guided and an
unguided image (FLUX.2, Qwen-Image and Z-Image with their tiny text encoders, `tiny_family`); the same families saved
without a text encoder (prompt embeddings only) are refused with a clear message."""

import pytest

import app as demo_app
from fixtures.tiny import TINY_PIPELINES
from fixtures.tiny_families import TINY_FAMILIES, tiny_family

EMBEDDINGS_ONLY = ("flux2", "qwenimage", "zimage")  # their default tiny pipelines have no text encoder
TEXT = ("sd3", "sd35", "flux", "sd15", "sdxl", "chroma", "wan", *EMBEDDINGS_ONLY)


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    builders = {**TINY_PIPELINES, **TINY_FAMILIES}

    def folder(name: str, text_encoder: bool = True) -> str:
        path = root / (name if text_encoder else f"{name}-embeddings")
        if not path.exists():
            build = (lambda: tiny_family(name)) if text_encoder and name in TINY_FAMILIES else builders[name]
            build().save_pretrained(path, safe_serialization=True)
        return str(path)

    return folder


def _demo(folder: str):
    from pipelines import HeadHunterPipeline

    pipe = HeadHunterPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return demo_app.Demo(pipe, folder, demo_app.Limits(max_steps=2, max_size=64, queue_size=2))


def test_every_family_is_covered():
    assert set(TEXT) == set(TINY_PIPELINES) | set(TINY_FAMILIES)


@pytest.mark.parametrize("family", TEXT)
def test_the_demo_generates_on_a_family(family_folder, family):
    demo = _demo(family_folder(family))
    assert demo.heads_per_layer["attn"] and demo.sizes.native[0] % demo.sizes.multiple == 0
    comparison, _, files, note, *_ = demo.generate(
        "a red circle", seed=1, steps=1, heads="L0H0", progress=lambda *a, **k: None
    )
    guided, plain = comparison
    assert guided.size == plain.size and len(files) == 2 and "heads L0H0" in note
    assert demo_app.build_app(demo)  # the UI builds for it (presets filtered by its heads)


@pytest.mark.parametrize("family", EMBEDDINGS_ONLY)
def test_a_family_without_a_text_encoder_is_refused_clearly(family_folder, family):
    with pytest.raises(
        demo_app.ModelFolderError, match="has no text_encoder or tokenizer, so it cannot read"
    ):
        _demo(family_folder(family, text_encoder=False))
