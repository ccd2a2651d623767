"""What a toy model was trained on, as the tools tell it: the grammar of the toy world's captions recorded in each
toy model's folder (toyworld/grammar_record.py -> toyworld.json), read without importing the toy world
(`tools.settings.model_vocabulary`); examples the grammar writes; a warning before any work for a prompt with
words the model never saw; `headhunter vocabulary` and generate's help list them."""

from __future__ import annotations

import json

import pytest

from tools.cli import build_parser, main
from tools.settings import ASSETS, model_vocabulary
from toyworld.grammar_record import EXAMPLE_KINDS, WORKS, candidates, grammar
from toyworld.scenes import HELD_OUT_PAIRS, held_out_pairs, parse_caption, vocabulary

TOYS = ("toy-sd3", "toy-sd3-deep", "toy-flux", "toy-sd15")
pytestmark = pytest.mark.skipif(not (ASSETS / "toy-sd3" / "toyworld.json").is_file(), reason="no toy models")


@pytest.mark.parametrize("toy", TOYS)
def test_each_toy_model_records_the_grammar_it_was_trained_on(toy):
    """The record equals what toyworld.scenes writes now (rerun toyworld/grammar_record.py when it changes); its
    examples are candidates the grammar writes, each drawn fully correct on at least half the measured seeds."""
    settings = json.loads((ASSETS / toy / "toyworld.json").read_text())
    recorded = dict(settings["grammar"])
    examples, scores = recorded.pop("examples"), recorded.pop("example_scores")
    assert recorded.pop("example_kinds") == list(EXAMPLE_KINDS) and recorded.pop("examples_note")
    assert recorded == json.loads(json.dumps(grammar(settings["held_out_pairs_seed"])))
    found = candidates(held_out_pairs(settings["held_out_pairs_seed"]))
    assert set(scores) == {p for texts in found.values() for p in texts}
    assert all(scores[p]["correct"] >= WORKS and scores[p]["seeds"] == 4 for p in examples)
    assert [k for k, texts in found.items() if set(texts) & set(examples)] == [
        k for k in EXAMPLE_KINDS if max(scores[p]["correct"] for p in found[k]) >= WORKS
    ]  # the best of each kind the model draws


@pytest.mark.parametrize("toy", TOYS)
def test_every_example_is_a_prompt_of_the_grammar_with_pairings_seen_in_training(toy):
    words = model_vocabulary(ASSETS / toy)
    assert len(words.examples) >= 3
    for example in words.examples:
        scene = parse_caption(example)  # the toy world reads it back
        assert not {(o.color, o.shape) for o in scene.objects} & HELD_OUT_PAIRS, example
        assert words.problems(example) == [], example
    assert set(words.words) <= set(vocabulary()) and "a" in words.words


def test_words_the_toy_never_saw_are_named():
    words = model_vocabulary(ASSETS / "toy-sd3")
    assert "orange" not in words.words and "star" not in words.words
    assert words.problems("an orange star") == [
        "'orange' (not a word it knows)",
        "'star' (not a word it knows)",
    ]
    # White is a background here, not an object's colour; red circles were held out of training.
    assert words.problems("a white square") == [
        "'white square' (a square needs one of its colours: blue, green, purple, red, yellow)"
    ]
    assert words.problems("a red circle") == ["'red circle' (held out of training: a pairing it never saw)"]
    assert words.problems("A Blue Square, on the LEFT.") == []


def _stopped(monkeypatch):
    """The model load replaced by an interruption: what is printed before it came before any work."""
    import tools.cli as cli

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", stop)


def test_generate_warns_in_one_line_before_any_work(monkeypatch, capsys, tmp_path):
    _stopped(monkeypatch)
    assert main(["generate", "an orange star", "--out", str(tmp_path / "a.png")]) == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "headhunter: warning: 'an orange star': the model was not trained on 'orange' (not a word it knows); "
        "'star' (not a word it knows); it will draw something else (its words and examples: headhunter "
        "vocabulary --model assets/toy-sd3)",
        "headhunter: interrupted",
    ]
    assert main(["generate", "a blue square on the left", "--out", str(tmp_path / "a.png")]) == 130
    assert capsys.readouterr().err.splitlines() == ["headhunter: interrupted"]


def test_search_and_batch_warn_before_any_work(monkeypatch, capsys, tmp_path):
    _stopped(monkeypatch)
    (tmp_path / "jobs.jsonl").write_text(
        json.dumps({"prompt": "a blue square"}) + "\n" + json.dumps({"prompt": "a pink star"}) + "\n"
    )
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(
        "headhunter: warning: line 2: 'a pink star': the model was not trained on 'pink'"
    )
    assert len(err) == 2
    args = ["search", "--prompt", "a blue square", "--prompt", "a large cat", "--prompt", "an orange star",
            "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(args) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("headhunter: warning: 'a large cat': the model was not trained on 'cat'")
    assert "(and 1 more of the 3 prompts)" in err[0] and len(err) == 2


def test_models_without_a_record_are_not_warned_about(tiny_folder, monkeypatch, capsys, tmp_path):
    _stopped(monkeypatch)
    assert model_vocabulary(tiny_folder("sd3")) is None and model_vocabulary("org/model") is None
    assert (
        main(["generate", "an orange star", "--model", tiny_folder("sd3"), "--out", str(tmp_path / "a.png")])
        == 130
    )
    assert capsys.readouterr().err.splitlines() == ["headhunter: interrupted"]


def test_the_vocabulary_command_and_generate_help_list_what_the_model_knows(capsys, tiny_folder):
    assert main(["vocabulary"]) == 0
    out = capsys.readouterr().out
    words = model_vocabulary(ASSETS / "toy-sd3")
    assert "colours: blue, green, purple, red, yellow" in out and "shapes: circle, square, triangle" in out
    assert all(f"  {example}  (" in out for example in words.examples) and " of 4 seeds)" in out
    assert "never seen together in training: blue triangle, red circle, yellow square" in out
    assert main(["vocabulary", "--model", tiny_folder("sd3")]) == 0
    assert "records no vocabulary" in capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    assert "colours blue, green, purple, red, yellow" in sub.epilog and "headhunter vocabulary" in sub.epilog
    assert any(f"e.g. {example!r}" in sub.epilog for example in words.examples)
