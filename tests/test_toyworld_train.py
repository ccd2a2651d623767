"""Toy-world training: the offline tokenizer, the null T5, the exact repeated-token attention shortcut, and
short runs of the three trainers against the loss logs of the trainers before they became toyworld.train."""

import importlib
import json
from pathlib import Path

import pytest
import torch

from toyworld.inference import RepeatedTokenJointAttnProcessor
from toyworld.scenes import caption, sample_scene, vocabulary
from toyworld.train.sd3 import SD3_ARCHS, build_null_t5, build_transformer, deepen, inserted_positions
from toyworld.train.tokenizer import build_clip_tokenizer, learn_bpe

MODEL = Path(__file__).resolve().parents[1] / "assets" / "toy-sd3"


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer(SD3_ARCHS["sd3"]["max_text_length"])


def test_every_toyworld_word_is_one_token(tokenizer):
    for word in vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a red circle").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 5


def test_captions_fit_the_text_length(tokenizer):
    longest = max(len(tokenizer(caption(sample_scene(s, style_prob=0.5), s)).input_ids) for s in range(500))
    assert longest <= SD3_ARCHS["sd3"]["max_text_length"]


def test_unknown_words_fall_back_to_characters(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a red zebra", add_special_tokens=False).input_ids)
    assert tokens[:2] == ["a</w>", "red</w>"] and "".join(tokens[2:]) == "zebra</w>"


def test_learn_bpe_is_deterministic():
    assert learn_bpe(["red", "green", "circle"]) == learn_bpe(["red", "green", "circle"])


def test_null_t5_outputs_exact_zeros():
    tokenizer, encoder = build_null_t5(32)
    ids = tokenizer(
        ["a red circle on the left"], padding="max_length", max_length=16, return_tensors="pt"
    ).input_ids
    assert torch.equal(encoder(ids)[0], torch.zeros(1, 16, 32))


def test_repeated_token_processor_equals_repeating_the_token():
    torch.manual_seed(0)
    transformer = build_transformer(SD3_ARCHS["sd3"]).eval()
    with torch.no_grad():
        for module in transformer.modules():  # SD3 zero-initialises some outputs; make every path matter
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.05)
        x, pooled = torch.randn(2, 4, 16, 16), torch.randn(2, transformer.config.pooled_projection_dim)
        text = torch.randn(2, 7, transformer.config.joint_attention_dim)
        t = torch.tensor([250.0, 800.0])
        full = transformer(x, torch.cat([text, torch.zeros(2, 50, text.shape[-1])], 1), pooled, t).sample
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(50))
        fast = transformer(x, torch.cat([text, torch.zeros(2, 1, text.shape[-1])], 1), pooled, t).sample
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)


def test_repeated_token_processor_takes_one_count_per_row():
    torch.manual_seed(0)
    transformer = build_transformer(SD3_ARCHS["sd3"]).eval()
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.05)
        x, pooled = torch.randn(2, 4, 16, 16), torch.randn(2, transformer.config.pooled_projection_dim)
        text = torch.randn(2, 7, transformer.config.joint_attention_dim)
        t = torch.tensor([250.0, 800.0])
        rows = []
        for i, n in enumerate((1, 40)):
            context = torch.cat([text[i : i + 1], torch.zeros(1, n, text.shape[-1])], 1)
            rows.append(transformer(x[i : i + 1], context, pooled[i : i + 1], t[i : i + 1]).sample)
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(torch.tensor([1.0, 40.0])))
        fast = transformer(x, torch.cat([text, torch.zeros(2, 1, text.shape[-1])], 1), pooled, t).sample
    torch.testing.assert_close(fast, torch.cat(rows), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="assets/toy-sd3 not trained yet")
@pytest.mark.parametrize(("old", "new", "expected"), [(8, 12, [2, 4, 7, 9]), (3, 5, [1, 3]), (8, 8, [])])
def test_inserted_blocks_are_spread_and_never_last(old, new, expected):
    assert inserted_positions(old, new) == expected


def test_a_deepened_transformer_computes_what_the_trained_one_does():
    """Identity blocks (adaLN-Zero) inserted between trained ones leave the output unchanged (1e-5), and the
    inserted blocks can learn (their modulation gets gradients)."""
    cfg = SD3_ARCHS["sd3"]
    torch.manual_seed(0)
    shallow = build_transformer({**cfg, "transformer": {**cfg["transformer"], "num_layers": 3}}).eval()
    deep = build_transformer({**cfg, "transformer": {**cfg["transformer"], "num_layers": 5}}).eval()
    for p in shallow.parameters():  # not the zero-initialised output layers of a fresh model
        torch.nn.init.normal_(p, std=0.05)
    assert deepen(shallow, deep) == [1, 3]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    context, pooled = torch.randn(2, 7, 128, generator=g), torch.randn(2, 64, generator=g)
    t = torch.tensor([300.0, 800.0])
    expected = shallow(x, context, pooled, t).sample
    torch.testing.assert_close(deep(x, context, pooled, t).sample, expected, atol=1e-5, rtol=1e-5)
    assert expected.abs().mean() > 0.01  # a non-trivial output
    deep(x, context, pooled, t).sample.square().mean().backward()
    assert deep.transformer_blocks[1].norm1.linear.weight.grad.abs().sum() > 0


def test_trained_sd3_loads_offline_and_generates_at_its_resolution():
    from diffusers import StableDiffusion3Pipeline

    settings = json.loads((MODEL / "toyworld.json").read_text())
    pipe = StableDiffusion3Pipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (settings["width"], settings["height"])
    assert pipe.transformer.config.num_layers >= 6 and pipe.transformer.config.num_attention_heads >= 4
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 30 * 2**20


# Loss-log rows (stage, step, field, value) of 11-step runs with seed 7 of the trainers at commit 52d8f17
# (toyworld/train.py, train_flux.py, train_sd15.py); at the split, their saved weights matched these
# trainers' bit for bit.
RECORDED = {
    "sd3": [
        ("vae", 0, "loss", 1.37422),
        ("latents", None, "shift", -0.049562226980924606),
        ("latents", None, "scale", 3.5855429061202315),
        ("denoiser", 0, "loss", 2.44503),
        ("denoiser", 10, "loss", 2.05308),
        ("denoiser", 10, "ema_loss", 2.3987),
        ("decoder", 0, "loss", 1.69235),
    ],
    "flux": [
        ("denoiser", 0, "loss", 2.05354),
        ("denoiser", 10, "loss", 2.03596),
        ("denoiser", 10, "ema_loss", 2.07883),
    ],
    "sd15": [
        ("latents", None, "scaling_factor", 0.9486792453683709),
        ("denoiser", 0, "loss", 1.01192),
        ("denoiser", 10, "loss", 1.06183),
        ("denoiser", 10, "ema_loss", 1.02384),
    ],
}
OPTIONS = {
    "sd3": ["--vae-steps", "2", "--decoder-steps", "2", "--vae-batch", "4"],
    "flux": ["--reuse", str(MODEL)],
    "sd15": ["--reuse", str(MODEL)],
}


@pytest.mark.parametrize("arch", sorted(RECORDED))
def test_short_run_reproduces_the_recorded_losses(arch, tmp_path):
    if arch != "sd3" and not (MODEL / "model_index.json").exists():
        pytest.skip("assets/toy-sd3 not trained yet")
    trainer = importlib.import_module(f"toyworld.train.{arch}")
    log = tmp_path / "loss.jsonl"
    argv = ["--out", str(tmp_path / "m"), "--log", str(log), "--steps", "11", "--pool", "64", "--batch", "4",
            "--threads", "1", "--seed", "7", *OPTIONS[arch]]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        trainer.main(argv)
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    for stage, step, field, value in RECORDED[arch]:
        (row,) = [r for r in rows if r["stage"] == stage and r.get("step") == step]
        assert row[field] == pytest.approx(value, rel=1e-5, abs=2e-5), (stage, step, field)
    training = json.loads((tmp_path / "m" / "training.json").read_text())
    assert training["command"] == f"python -m toyworld.train.{arch} " + " ".join(argv)


def test_a_spent_time_budget_runs_no_steps():
    from toyworld.train.loop import run_loop

    calls = []
    assert run_loop(lambda progress: calls.append(progress) or 0.0, 0, -5.0, "x", lambda *a: None) == 0
    assert run_loop(lambda progress: calls.append(progress) or 0.0, 3, -5.0, "x", lambda *a: None) == 3
    assert calls == [0.0, 1 / 3, 2 / 3]


def test_decoder_fraction_zero_runs_no_decoder_stage(tmp_path):
    from toyworld.train import sd3

    log = tmp_path / "loss.jsonl"
    argv = ["--out", str(tmp_path / "m"), "--log", str(log), "--steps", "2", "--pool", "16", "--batch", "2",
            "--threads", "1", "--seed", "7", "--vae-steps", "2", "--vae-batch", "4", "--minutes", "0.6",
            "--decoder-fraction", "0"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        sd3.main(argv)
    finally:
        torch.set_num_threads(threads)
    stages = {json.loads(line)["stage"] for line in log.read_text().splitlines()}
    assert "denoiser" in stages and "decoder" not in stages
