"""tools/search_run.py: the head search's run and report, written once for the command and the demo (no model)."""

from __future__ import annotations

import json
import math

import pytest

from guidance.search import SearchSettings, search_profile
from tools import cli, demo, search_run
from tools.search_run import (
    SearchResult,
    broken_pairs,
    guard_limits,
    guard_words,
    run_search,
    score_text,
    search_rounds,
    write_preset,
)

INF = float("-inf")


def test_the_command_and_the_demo_share_one_implementation():
    """The demo's names are the shared module's (app.py imports them from tools.demo); the CLI keeps none."""
    for name in ("profile_text", "search_rounds", "guard_failure", "search_objective"):
        assert getattr(demo, name) is getattr(search_run, name), name
    for gone in ("search_report", "_guard_words", "_score"):
        assert not hasattr(cli, gone), gone


def test_guard_limits_take_the_profiles_threshold_else_max_drop_or_its_default():
    ours, paper = search_profile("ours", "sd3"), search_profile("paper", "sd3")
    assert guard_limits(ours, "saturation") == (0.05, None)
    assert guard_limits(ours, "saturation", 0.2) == (0.2, None)
    assert guard_limits(paper, "pickscore:some/model") == (None, paper.min_score("pickscore:x"))
    assert guard_limits(paper, "pickscore:some/model", 0.1)[0] == 0.1
    assert guard_words(None, 0.05, None) is None
    assert guard_words("saturation", 0.05, 20.0) == (
        "`saturation` must drop at most 0.05 below the unguided images' score and stay at or above 20"
    )


def test_a_failed_guard_is_said_on_the_pairs_it_failed_on():
    assert score_text(0.51234) == "0.5123" and score_text(INF) == "guard failed"
    assert score_text(INF, "-inf (guard failed)") == "-inf (guard failed)"
    assert broken_pairs({"score": 0.5, "validation": None}) is None
    assert broken_pairs({"score": INF, "validation": None}) == "search"
    assert broken_pairs({"score": 0.5, "validation": INF}) == "validation"


class _Search:
    """The phases a `HeadSearch` offers, recorded in the order they are called."""

    def __init__(self):
        self.baseline, self.settings, self.calls = 0.5, SearchSettings(["p"], [0], k=2, rounds=3), []

    def head_map(self):
        self.calls.append("head_map")
        return {(0, 0): 0.6, (0, 1): INF}

    def layer_scores(self):
        self.calls.append("layers")
        return {0: 0.55}

    def greedy(self):
        self.calls.append("greedy")
        return [{"round": 1, "added": ["L0H0"], "tried": [(0, 0)], "score": 0.6, "validation": None,
                 "adopted": True, "why": "adopted", "selected": [(0, 0)], "heads": "L0H0"}]  # fmt: skip


def test_run_search_announces_each_phase_and_hands_it_over_when_it_ends():
    search, events = _Search(), []
    result = run_search(search, sweep=True, layers=True, begin=lambda w: events.append(("begin", w)),
                        finished=lambda phase, r: events.append(("done", phase)))  # fmt: skip
    assert search.calls == ["head_map", "layers", "greedy"]
    assert [phase for kind, phase in events if kind == "done"] == ["head_map", "layers", "greedy"]
    assert events[0] == ("begin", "Head map: every head perturbed alone")
    assert ("begin", "Greedy rounds (up to 3 of 2 head(s) each)") in events
    assert result.selected == [(0, 0)]
    scores = result.scores()
    assert scores["head_map"] == {"L0H0": 0.6, "L0H1": INF} and scores["layers"] == {"L0": 0.55}
    assert list(scores) == ["unguided", "head_map", "layers", "rounds"]
    assert run_search(_Search(), sweep=False).head_map is None


def test_write_preset_writes_strict_json_or_removes_a_stale_one(tmp_path):
    settings = SearchSettings(["a red circle"], [0], model="m", objective="saturation")
    result = SearchResult(0.5, {(0, 0): 0.6, (0, 1): INF}, None, _Search().greedy())
    found, path = write_preset(tmp_path, result, settings, 0.5, "saturation")
    data = json.loads(path.read_text(), parse_constant=pytest.fail)
    assert str(found) == "saturation: L0H0=0.5" and data["scores"]["head_map"]["guard_failed"] == ["L0H1"]
    assert write_preset(tmp_path, SearchResult(0.5), settings, 0.5, "saturation") is None
    assert not path.exists()


def test_the_demos_round_lines_explain_a_failed_guard():
    history = [{"added": ["L0H0"], "score": INF, "validation": None, "adopted": False,
                "why": "not adopted: the guard objective failed on the search pairs", "selected": []}]  # fmt: skip
    lines, selected = search_rounds(history, 0.5, lambda record: "the guard averaged 0.1")
    assert lines[0] == (
        "Round 1: added L0H0 → -inf (guard failed); not adopted: the guard objective failed on the search pairs. "
        "Guard: the guard averaged 0.1"
    )
    assert selected == [] and lines[-1].startswith("No round beat")
    assert not math.isfinite(history[0]["score"])
