"""A head search, run and reported once for both front ends: the `headhunter search` command (tools/cli.py) and
the demo's Head search tab (tools/demo.py's `SearchRun`).

- `search_objective`: the objective with its guard and the guard's limits (the profile's absolute threshold, else
  `--max-drop` or its default), and `guard_words`, what the guard asks in words.
- `run_search`: the phases in order (the single-head map, whole layers, the greedy rounds), each announced before
  it starts and handed over when it ends (the command writes headmap.png then, the demo shows it); the outcome is a
  `SearchResult`, whose `scores` are the preset's.
- `write_preset`: preset.json of what was found, or no preset.json (a stale one removed) when no round was adopted.
- The report's pieces: a score as text (`score_text`, -inf being a failed guard), the best and the failed single
  heads, which pairs a round's guard failed on (`broken_pairs`) and, measured, why (`guard_failure`,
  `round_guard`). The command's report.md (`search_report`) and the demo's lines (`search_rounds`, `profile_text`)
  are written from them; their wording differs where each is pinned (report.md's documented sections, the demo's
  sentences).
- `search_to_folder`: the command's whole run: the search (cached under `out/cache`, so an interrupted search
  resumes; split across `accelerate launch` processes by `HeadSearch`), then, on rank 0, headmap.png, report.md and
  preset.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guidance.config import SEARCH_SETTINGS
from guidance.heads import HeadSelection
from guidance.search import HeadSearch, SearchProfile, SearchSettings, heatmap, label, preset, split_pairs

GUARD_FAILED_TEXT = "guard failed"  # report.md's word for a -inf score ("scores **guard failed**")

# -------------------------------------------------------------------------------------------------------------
# The objective and its guard
# -------------------------------------------------------------------------------------------------------------


def guard_limits(profile: SearchProfile, guard: str | None, max_drop: float | None = None):
    """(max_drop, min_score) of a guard objective: the profile's absolute threshold for it (the paper's PickScore
    20), and `max_drop` as given; without either, `SEARCH_SETTINGS["max_drop"]`'s default."""
    min_score = profile.min_score(guard)
    if max_drop is None and min_score is None:  # the profile has no absolute threshold for this guard
        max_drop = SEARCH_SETTINGS["max_drop"].default
    return max_drop, min_score


def search_objective(spec: str, guard: str | None, profile: SearchProfile, max_drop: float | None = None):
    """(objective, max_drop, min_score): the objective `spec` (with the profile's CLIP prompt prefix), constrained
    by `guard` within its limits (`guard_limits`)."""
    from guidance import objectives  # looked up at call time (tests replace get_objective)

    max_drop, min_score = guard_limits(profile, guard, max_drop)
    objective = objectives.get_objective(spec, guard, max_drop, min_score, profile.clip_prefix)
    return objective, max_drop, min_score


def guard_words(guard: str | None, max_drop: float | None, min_score: float | None) -> str | None:
    """What the guard objective asks, in words (None without one)."""
    if guard is None:
        return None
    rules = ([f"drop at most {max_drop:g} below the unguided images' score"] if max_drop is not None else []) + (
        [f"stay at or above {min_score:g}"] if min_score is not None else [])  # fmt: skip
    return f"`{guard}` must {' and '.join(rules)}"


# -------------------------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What a search found: the unguided score, the single-head map and the whole layers' scores (where asked
    for), and the greedy rounds (`HeadSearch.greedy`'s records)."""

    baseline: float
    head_map: dict | None = None
    layers: dict | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def selected(self) -> list:
        """The adopted heads after the last round (none when round 1 was not adopted)."""
        return self.history[-1]["selected"] if self.history else []

    def scores(self) -> dict:
        """The scores kept in preset.json (`preset` makes them strict JSON)."""
        scores: dict = {"unguided": self.baseline}
        if self.head_map is not None:
            scores["head_map"] = {label((h,)): v for h, v in self.head_map.items()}
        if self.layers is not None:
            scores["layers"] = {f"L{layer}": v for layer, v in self.layers.items()}
        scores["rounds"] = self.history
        return scores


def run_search(search: HeadSearch, sweep: bool, layers: bool = False, begin: Callable[[str], None] | None = None,
               finished: Callable[[str, SearchResult], None] | None = None) -> SearchResult:  # fmt: skip
    """The search's phases on a made `HeadSearch` (its unguided images scored): the head map (`sweep`), whole
    layers (`layers`), the greedy rounds (k and rounds of its settings). `begin(words)` is told each phase before
    it starts, `finished(phase, result)` after it ends (`head_map`, `layers`, `greedy`)."""
    result, settings = SearchResult(search.baseline), search.settings
    begin, finished = begin or (lambda words: None), finished or (lambda phase, result: None)
    if sweep:
        begin("Head map: every head perturbed alone")
        result.head_map = search.head_map()
        finished("head_map", result)
    if layers:
        begin("Whole layers: every head of a layer perturbed")
        result.layers = search.layer_scores()
        finished("layers", result)
    begin(f"Greedy rounds (up to {settings.rounds} of {settings.k} head(s) each)")
    result.history = search.greedy()
    finished("greedy", result)
    return result


def write_preset(out: Path, result: SearchResult, settings: SearchSettings, use_strength: float, name: str,
                 layout=None) -> tuple[HeadSelection, Path] | None:  # fmt: skip
    """`out/preset.json` of the adopted heads at `use_strength`, with the settings and `result.scores()`; None,
    and no preset.json (one from an earlier run in this folder is stale), when no round was adopted."""
    path = Path(out) / "preset.json"
    if not result.selected:
        path.unlink(missing_ok=True)
        return None
    found = preset(result.selected, settings, use_strength, result.scores(), name=name, layout=layout)
    return found, found.save(path)


# -------------------------------------------------------------------------------------------------------------
# The report's pieces
# -------------------------------------------------------------------------------------------------------------


def score_text(value: float, failed: str = GUARD_FAILED_TEXT) -> str:
    """A search score in a report: -inf is a candidate whose guard objective failed (said as `failed`)."""
    return f"{value:.4f}" if math.isfinite(value) else failed


def best_heads(head_map: dict, n: int, failed: str = GUARD_FAILED_TEXT) -> str:
    """The `n` best single heads with their scores, best first: `L0H1 0.5123, L2H0 0.5011`."""
    best = sorted(head_map, key=lambda h: -head_map[h])[:n]
    return ", ".join(f"{label((h,))} {score_text(head_map[h], failed)}" for h in best)


def failed_heads(head_map: dict) -> list:
    """The single heads whose guard objective failed (score -inf), in the map's order."""
    return [h for h in head_map if not math.isfinite(head_map[h])]


def broken_pairs(record: dict) -> str | None:
    """The pairs (`validation` or `search`) on which a greedy round's tried set failed its guard (-inf), or None."""
    validation = record.get("validation")
    if validation is not None and not math.isfinite(validation):
        return "validation"
    return None if math.isfinite(record["score"]) else "search"


def guard_failure(search: HeadSearch, candidate, pairs: str) -> str:
    """Why `candidate` scored -inf on `pairs` (`search` or `validation`): its mean guard score against the limit
    of `guidance.objectives.Constrained` (the unguided images' mean minus `max_drop`, and/or `min_score`)."""
    objective = search.objective
    guard = getattr(objective, "guard", None)
    if guard is None:
        return "its objective returned -inf"
    indices = search._indices(pairs)
    per_pair = search.per_pair([tuple(candidate), ()], indices)
    mean = float(np.mean(np.asarray(per_pair[tuple(candidate)])[..., -1]))
    unguided = float(np.mean(np.asarray(per_pair[()])[..., -1]))
    limits = []
    if objective.max_drop is not None:
        limits.append(
            f"{unguided - objective.max_drop:.4f} (the unguided images' {unguided:.4f} minus {objective.max_drop:g})"
        )
    if objective.min_score is not None:
        limits.append(f"{objective.min_score:g} (absolute)")
    return (
        f"the guard {guard.name} averaged {mean:.4f} on the {pairs} pairs, below its limit "
        + " and ".join(limits)
    )


def round_guard(search: HeadSearch, record: dict) -> str:
    """Why a greedy round's tried set scored -inf: on its validation pairs where those judged it."""
    return guard_failure(search, tuple(map(tuple, record["tried"])), broken_pairs(record) or "search")


# -------------------------------------------------------------------------------------------------------------
# The demo's report lines
# -------------------------------------------------------------------------------------------------------------

DEMO_FAILED = "-inf (guard failed)"  # the demo's word for a -inf score


def search_rounds(
    history: list[dict], baseline: float, explain: Callable[[dict], str] | None = None
) -> tuple[list[str], list]:
    """Report lines (rounds counted from 1) and the adopted selection. A round that does not beat the best
    earlier selection (the unguided images first) is not adopted; a record's own `adopted` and `why` (from
    `HeadSearch.greedy`) win. A round whose score is -inf says why through `explain(record)`."""
    lines, selected, best = [], [], baseline
    for number, record in enumerate(history, start=1):
        score = float(record["score"])
        adopted = record.get("adopted", score > best)
        added = ", ".join(record.get("added", []))
        why = record.get("why") or ("adopted" if adopted else f"not adopted: not better than {best:.4f}")
        validation = record.get("validation")
        scores = score_text(score, DEMO_FAILED) + (
            "" if validation is None else f" (validation {score_text(float(validation), DEMO_FAILED)})"
        )
        line = f"Round {number}: added {added} → {scores}; {why}"
        if broken_pairs({**record, "score": score}) and explain is not None:
            line += f". Guard: {explain(record)}"
        lines.append(line)
        if adopted:
            selected, best = list(record["selected"]), max(best, score)
    if not selected:
        lines.append("No round beat the unguided image: no heads to use for this objective.")
    return lines, selected


def head_map_line(search: HeadSearch, head_map: dict) -> str:
    """The demo's line on the single-head map: the best five, and the heads whose guard failed, the first with why."""
    line = "Best single heads: " + best_heads(head_map, 5, DEMO_FAILED)
    failed = failed_heads(head_map)
    if failed:
        line += (
            f". {len(failed)} head(s) failed the guard (score -inf; grey with a cross in the map), e.g. "
            f"{label((failed[0],))}: {guard_failure(search, (failed[0],), 'search')}"
        )
    return line


def profile_text(settings: SearchSettings) -> str:
    """What a search profile set, in one line of the report (the validation pairs as they are for these pairs)."""
    cfg = "off" if settings.guidance_scale <= 1 else f"{settings.guidance_scale:g}"
    pairs = len(settings.prompts) * len(settings.seeds)
    held = len(split_pairs(pairs, settings.validation)[1])
    if held:
        validation = f"{held} of the {pairs} prompt-seed pairs held out to judge each round"
    elif settings.validation:
        validation = f"no pair held out ({settings.validation:.0%} of {pairs} is none): rounds judged on the search pairs"
    else:
        validation = "no validation pairs"
    stop = (
        "a round is adopted only if it beats the best earlier one"
        if settings.early_stop
        else "every round is adopted"
    )
    return (
        f"Profile **{settings.profile}**: {settings.steps} steps, CFG {cfg}, w {settings.pag_scale:g}, search u "
        f"{settings.strength:g}, {settings.k} head(s) per round, up to {settings.rounds} round(s), {validation}; "
        f"{stop}."
    )


# -------------------------------------------------------------------------------------------------------------
# The command's report.md and its whole run
# -------------------------------------------------------------------------------------------------------------


def search_report(name: str, settings: SearchSettings, search: HeadSearch, guard: str | None,
                  result: SearchResult) -> list[str]:  # fmt: skip
    """report.md of a head search, in words: what was scored and how to read it, the head map, the layers, and
    why each greedy round was adopted or not, a failed guard (a score of -inf) said as such."""
    head_map, layers, history = result.head_map, result.layers, result.history
    pairs, held = len(search.search_pairs), len(search.validation_pairs)
    unguided = f"{search.baseline:.4f}" + (
        f" on the search pairs, {search.baseline_validation:.4f} on the validation pairs" if held else "")  # fmt: skip
    lines = [
        f"# Head search: {name}", "",
        f"model `{settings.model}`, {len(settings.prompts)} prompts x {len(settings.seeds)} seeds ({pairs} search "
        f"pairs, {held} validation pairs), {settings.steps} steps, CFG {settings.guidance_scale}, w "
        f"{settings.pag_scale}, search u {settings.strength}", "",
        "## How to read this", "",
        f"- A score is the objective averaged over the search pairs (higher is better); the unguided images score "
        f"{unguided}.",
    ]  # fmt: skip
    if guard:
        lines.append(f"- Guard: {guard}. A candidate whose images break that scores **guard failed** (-inf here; "
                     "`null` with `\"guard\": \"failed\"` in preset.json): it cannot be adopted, whatever its "
                     "objective.")  # fmt: skip
    if settings.early_stop:
        where = "validation pairs" if held else "search pairs (no validation split)"
        lines.append(f"- Each greedy round adds the {settings.k} best heads to the selection; a round is adopted "
                     f"only if the new selection beats the best earlier one (the unguided images before round 1) "
                     f"on the {where}; the first round that does not ends the search.")  # fmt: skip
    else:
        lines.append(f"- Each greedy round adds the {settings.k} best heads; profile `{settings.profile}` has no "
                     "early stop, so every round is adopted.")  # fmt: skip
    lines += ["", f"unguided: {search.baseline:.4f}"]
    if head_map is not None:
        failed = [label((h,)) for h in failed_heads(head_map)]
        lines += ["", "## Single heads (headmap.png)", "", "best single heads: " + best_heads(head_map, 10)]
        if failed:
            lines.append(f"{len(failed)} of {len(head_map)} heads failed the guard alone (crossed grey cells in "
                         f"headmap.png): {', '.join(failed)}")  # fmt: skip
    if layers is not None:
        lines += ["", "## Whole layers", "",
                  "layer-level PAG: " + ", ".join(f"L{layer} {score_text(v)}" for layer, v in layers.items())]  # fmt: skip
    lines += ["", "## Rounds", ""]
    for record in history:
        valid = record["validation"]
        validation = "" if valid is None else f", validation {score_text(valid)}"
        lines.append(f"round {record['round']}: +{', '.join(record['added'])} -> {score_text(record['score'])}"
                     f"{validation} ({record['why']})")  # fmt: skip
        if broken_pairs(record):
            lines.append(f"  the selection {record['heads'] if record['adopted'] else label(tuple(record['tried']))}"
                         f" broke the guard ({guard or 'its guard objective'}), so its score is -inf: it was not "
                         "adopted")  # fmt: skip
    lines.append("")
    if result.selected:
        lines.append(f"Selected: {label(tuple(result.selected))} (adopted in round "
                     f"{max(r['round'] for r in history if r['adopted'])}).")  # fmt: skip
    else:
        lines.append("no round beat the unguided images on the validation pairs: no heads help this objective "
                     "here, so no preset.json is written")  # fmt: skip
    return lines


def search_to_folder(pipe, objective, settings: SearchSettings, out: Path, *, sweep: bool, layers: bool,
                     use_strength: float, name: str, guard: str | None) -> tuple[list[str], Path | None] | None:  # fmt: skip
    """The command's search: scores cached in `out/cache` (an interrupted search resumes), headmap.png as soon as
    the head map is done, then report.md and preset.json, all written by rank 0 (named `name`; `guard`: what it asks, in words).
    Returns (the report's lines, preset.json or None); None on a process other than rank 0 under
    `accelerate launch` (rank 0 writes the outputs)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    search = HeadSearch(pipe, objective, settings, cache=out / "cache")

    def finished(phase: str, result: SearchResult) -> None:
        if phase == "head_map" and search.rank == 0:
            heatmap(result.head_map, search.baseline, out / "headmap.png", title=objective.name)

    result = run_search(search, sweep, layers, finished=finished)
    if search.rank != 0:
        return None
    report = search_report(objective.name, settings, search, guard, result)
    found = write_preset(out, result, settings, use_strength, name, layout=search.layout)
    if found is not None:
        report += [f"The heads go into `preset.json` at u {use_strength:g} (the strength to use them at; "
                   f"the search used u {settings.strength:g}) and w {settings.pag_scale:g}."]  # fmt: skip
    (out / "report.md").write_text("\n".join(report) + "\n")
    return report, None if found is None else found[1]
