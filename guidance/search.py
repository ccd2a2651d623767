"""HeadHunter search: score head sets by an objective, sweep single heads (the head map), greedy selection.

From "Fine-Grained Perturbation Guidance via Attention Head Selection" (2025), Algorithm 1: each round scores
S ∪ {h} for every remaining head h at search strength u (1.0), averaged over M prompt-seed pairs, and adds the
top k heads to S; R rounds. Candidates are evaluated as images of one batch (`pag_heads_per_image`), so one
forward pass evaluates many heads. Scores are cached per (candidate, pair) in a JSON file: an interrupted search
resumes without recomputing what it finished. With several processes (`accelerate launch`) each rank takes its
share of the candidates and writes its own cache file; every rank reads them all afterwards.

Beyond the paper: a validation split of the pairs that stops the greedy rounds when they stop helping there
(issue #18), successive halving for the single-head sweep, and named profiles (`SEARCH_PROFILES`: ours, and the
official search's settings). See docs/search.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from guidance.adapters import heads_layout
from guidance.config import SEARCH_SETTINGS, SOFTPAG_SETTINGS
from guidance.heads import HeadEntry, HeadGroup, HeadSelection
from guidance.objectives import Objective
from guidance.ranks import barrier, process_index
from guidance.swap import denoiser_of

Candidate = tuple[tuple[int, int], ...]  # sorted (layer, head) pairs; () = unguided


def label(candidate: Candidate) -> str:
    """`L1H2,L3H0` for a candidate; `none` for the unguided baseline."""
    return ",".join(f"L{layer}H{head}" for layer, head in candidate) or "none"


# -------------------------------------------------------------------------------------------------------------
# Settings and named profiles
# -------------------------------------------------------------------------------------------------------------

# `heads_layout(denoiser).arch`: the families of `guidance.layouts.FAMILIES` (UNets are `unet`).
GENERIC_ARCHS = ("flux2", "chroma", "qwenimage", "zimage", "wan")
ARCHS = ("sd3", "flux", "unet", *GENERIC_ARCHS)
FLUX_LIKE = ("flux", "flux2", "chroma")  # guidance-distilled or FLUX-sized: the paper's FLUX search settings
# Fields that leave a candidate's per-pair scores unchanged (not in the cache key).
NOT_SCORED = ("batch", "k", "rounds", "validation", "early_stop", "profile")


@dataclass(frozen=True)
class SearchProfile:
    """Named search settings for one architecture. `None` leaves the caller's default (the CLI and the demo use
    the model's recommended steps, size and CFG); `clip_prefix` and `min_scores` are for building the objective."""

    guidance_scale: float | None = None
    pag_scale: float | None = None
    strength: float = SEARCH_SETTINGS["search_strength"].default
    steps: int | None = None
    size: int | None = None
    k: int = SEARCH_SETTINGS["k"].default
    rounds: int = SEARCH_SETTINGS["rounds"].default
    validation: float = SEARCH_SETTINGS["validation"].default
    early_stop: bool = SEARCH_SETTINGS["early_stop"].default
    clip_prefix: str = ""
    min_scores: dict[str, float] = field(default_factory=dict)  # absolute guard thresholds by objective kind

    def settings(self) -> dict:
        """The profile's `SearchSettings` fields that it sets (not None)."""
        names = {f.name for f in fields(SearchSettings)}
        return {k: v for k, v in asdict(self).items() if k in names and v is not None}

    def min_score(self, guard: str | None) -> float | None:
        """The absolute threshold the profile sets for a guard objective (`pickscore:<model>` -> 20.0), or None."""
        return None if guard is None else self.min_scores.get(guard.partition(":")[0])


# Ours: CFG on at the model's recommended scale, k 4, 1 round, a 25% validation split that stops the rounds.
_OURS = SearchProfile()
# The official search (paper, Sec. 4 and its code): CFG off (guidance_scale 0; on FLUX this also sets the
# distilled guidance to 0), u = 1, 3 heads per round for 5 rounds, CLIP score with the prefix "A photo depicts",
# PickScore >= 20 and aesthetic >= 6 (absolute) before ranking; w = 3 on SD3, w = 8 with 15 steps at 512 px on
# FLUX. The paper searches no UNet; its SD3 settings are used there.
_PAPER = SearchProfile(guidance_scale=0.0, pag_scale=3.0, k=3, rounds=5, validation=0.0, early_stop=False,
                       clip_prefix="A photo depicts ", min_scores={"pickscore": 20.0, "aesthetic": 6.0})  # fmt: skip
SEARCH_PROFILES: dict[str, dict[str, SearchProfile]] = {
    "ours": {arch: _OURS for arch in ARCHS},
    "paper": {
        arch: replace(_PAPER, pag_scale=8.0, steps=15, size=512) if arch in FLUX_LIKE else _PAPER
        for arch in ARCHS
    },
}


def search_profile(name: str, arch: str) -> SearchProfile:
    """The profile `name` for an architecture (`sd3`, `flux`, `unet`), with an error naming what is allowed."""
    if name not in SEARCH_PROFILES:
        raise ValueError(f"profile={name!r} is unknown; choose one of {sorted(SEARCH_PROFILES)}")
    if arch not in SEARCH_PROFILES[name]:
        raise ValueError(f"arch={arch!r} is unknown; choose one of {list(ARCHS)}")
    return SEARCH_PROFILES[name][arch]


@dataclass
class SearchSettings:
    """Everything that determines a candidate's score (hashed into the cache key), and how the greedy search runs
    (`k` heads per round, `rounds`, the `validation` share of pairs, `early_stop`; not in the key)."""

    prompts: list[str]
    seeds: list[int]
    steps: int = SEARCH_SETTINGS["steps"].default
    size: int | None = SEARCH_SETTINGS["size"].default
    guidance_scale: float = SEARCH_SETTINGS["guidance_scale"].default
    pag_scale: float = SOFTPAG_SETTINGS["pag_scale"].default
    strength: float = SEARCH_SETTINGS["search_strength"].default  # the preset carries the use strength
    identity: str = SOFTPAG_SETTINGS["pag_identity"].default
    batch: int = SEARCH_SETTINGS["batch"].default
    model: str = ""
    objective: str = ""
    extra: dict = field(default_factory=dict)  # more call arguments (e.g. a toy model's max_sequence_length)
    k: int = SEARCH_SETTINGS["k"].default
    rounds: int = SEARCH_SETTINGS["rounds"].default
    validation: float = SEARCH_SETTINGS["validation"].default
    early_stop: bool = SEARCH_SETTINGS["early_stop"].default
    profile: str = "ours"

    def __post_init__(self):
        if not 0.0 <= self.validation < 1.0:
            raise ValueError(f"validation={self.validation} must be a share of the pairs in [0, 1)")

    @classmethod
    def from_profile(cls, name: str, arch: str, prompts: Sequence[str], seeds: Sequence[int],
                     defaults: dict | None = None, **overrides) -> SearchSettings:  # fmt: skip
        """Settings of a named profile (`SEARCH_PROFILES`): `defaults` (e.g. the model's recommended steps, size,
        CFG) < the profile < `overrides` (a user's explicit values; None entries are ignored)."""
        values = {**(defaults or {}), **search_profile(name, arch).settings()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(prompts=list(prompts), seeds=list(seeds), profile=name, **values)

    def key(self) -> str:
        """A short hash of the settings that affect scores (not the batch size or the greedy's knobs)."""
        data = {k: v for k, v in asdict(self).items() if k not in NOT_SCORED}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def split_pairs(n: int, validation: float) -> tuple[list[int], list[int]]:
    """(search, validation) indices of n prompt-seed pairs: a fixed permutation (seed 0) with floor(validation * n)
    held out, the same in every run and every process. The search indices stay in permuted order, so a prefix
    (successive halving's first rungs) mixes prompts and seeds."""
    order = np.random.default_rng(0).permutation(n).tolist()
    held = int(validation * n)
    return order[held:], sorted(order[:held])


class HeadSearch:
    """Evaluate head sets on a HeadHunter pipeline with an objective, with a resumable per-pair score cache.

    The prompt-seed pairs are split (`settings.validation`): searches rank on the search pairs; the greedy
    reports each round on the validation pairs and stops when they stop improving. `images` counts the images
    this process generated (cache hits excluded); `result` holds the final greedy selection."""

    def __init__(self, pipe, objective: Objective, settings: SearchSettings, cache: str | Path | None = None,
                 progress: bool = True):  # fmt: skip
        self.pipe, self.objective, self.settings = pipe, objective, settings
        denoiser = denoiser_of(pipe)
        self.layout = heads_layout(denoiser)
        self.heads_per_layer = self.layout.heads_per_layer["attn"]
        self.pairs = [(p, s) for p in settings.prompts for s in settings.seeds]
        self.search_pairs, self.validation_pairs = split_pairs(len(self.pairs), settings.validation)
        self.progress = progress
        self.rank, self.world = process_index()
        self.cache_dir = Path(cache) if cache else None
        self.scores: dict[str, dict[int, list[float]]] = {}
        self.images = 0
        self.result: dict | None = None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._read_caches()
        self.per_pair([()], range(len(self.pairs)))  # the unguided images of every pair
        self.baseline = self.evaluate([()])[()]
        self.baseline_validation = self.evaluate([()], "validation")[()] if self.validation_pairs else None

    # -- cache --------------------------------------------------------------------------------------------

    def _cache_file(self, rank: int) -> Path:
        return self.cache_dir / f"cache-{self.settings.key()}-rank{rank}.json"

    def _read_caches(self) -> None:
        for path in self.cache_dir.glob(f"cache-{self.settings.key()}-rank*.json"):
            for cand, pairs in json.loads(path.read_text()).items():
                self.scores.setdefault(cand, {}).update({int(i): v for i, v in pairs.items()})

    def _write_cache(self) -> None:
        if not self.cache_dir:
            return
        path = self._cache_file(self.rank)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.scores))
        tmp.replace(path)

    # -- evaluation ---------------------------------------------------------------------------------------

    def _generate(
        self, candidates: Sequence[Candidate], pairs: Sequence[tuple[str, int]]
    ) -> list[Image.Image]:
        s = self.settings
        heads = [
            HeadSelection((HeadGroup(tuple(HeadEntry(layer, h) for layer, h in c)),)) if c else None
            for c in candidates
        ]
        call = dict(s.extra) if s.size is None else dict(s.extra, height=s.size, width=s.size)
        if any(heads):  # rows without heads get u = 0 everywhere: their images equal unguided ones
            call.update(pag_scale=s.pag_scale, pag_strength=s.strength, pag_identity=s.identity,
                        pag_heads_per_image=heads)  # fmt: skip
        # the prompt by name: FLUX.2's first positional argument is an input image
        output = self.pipe(
            prompt=[p for p, _ in pairs], generator=[torch.Generator().manual_seed(seed) for _, seed in pairs],
            num_inference_steps=s.steps, guidance_scale=s.guidance_scale, **call,
        )  # fmt: skip
        if hasattr(output, "images"):
            return output.images
        return [_first_frame(video) for video in output.frames]

    def _indices(self, pairs: str | Sequence[int]) -> list[int]:
        """Pair indices of a split name (`search`, `validation`, `all`) or the indices themselves."""
        if not isinstance(pairs, str):
            return list(pairs)
        splits = {"search": self.search_pairs, "validation": self.validation_pairs,
                  "all": list(range(len(self.pairs)))}  # fmt: skip
        if pairs not in splits:
            raise ValueError(f"pairs={pairs!r} must be one of {sorted(splits)} or a list of pair indices")
        return splits[pairs]

    def per_pair(
        self, candidates: Iterable[Candidate], pairs: str | Sequence[int] = "search"
    ) -> dict[Candidate, list]:
        """Per-pair scores of each candidate on `pairs`, generating only (candidate, pair) items not cached."""
        candidates, indices = list(dict.fromkeys(candidates)), self._indices(pairs)
        todo = [(c, i) for c in candidates for i in indices if i not in self.scores.get(label(c), {})]
        bar = tqdm(total=len(todo), desc="head search images", disable=not self.progress or not todo)
        for start in range(0, len(todo), self.settings.batch):
            chunk = todo[start : start + self.settings.batch]
            prompts_seeds = [self.pairs[i] for _, i in chunk]
            images = self._generate([c for c, _ in chunk], prompts_seeds)
            self.images += len(images)
            values = self.objective(images, [p for p, _ in prompts_seeds])
            for (c, i), value in zip(chunk, values, strict=True):
                self.scores.setdefault(label(c), {})[i] = np.asarray(value).tolist()
            self._write_cache()
            bar.update(len(chunk))
        bar.close()
        return {c: [self.scores[label(c)][i] for i in indices] for c in candidates}

    def evaluate(
        self, candidates: Sequence[Candidate], pairs: str | Sequence[int] = "search"
    ) -> dict[Candidate, float]:
        """Objective score of each candidate on `pairs` (default: the search split), against the unguided images
        of the same pairs; with accelerate, this rank generates its share of the candidates."""
        indices = self._indices(pairs)
        self.per_pair([c for i, c in enumerate(candidates) if i % self.world == self.rank], indices)
        if self.world > 1:
            barrier()
            self._read_caches()
        per_pair = self.per_pair(candidates, indices)  # everything is cached now
        self.objective.fit_baseline(np.asarray(self.per_pair([()], indices)[()]))
        return {c: self.objective.candidate_score(np.asarray(v)) for c, v in per_pair.items()}

    # -- searches -----------------------------------------------------------------------------------------

    def all_heads(self) -> list[tuple[int, int]]:
        """Every (layer, head) of the main attention."""
        return [(layer, h) for layer, n in sorted(self.heads_per_layer.items()) for h in range(n)]

    def head_map(self, halving: bool = False, **options) -> dict[tuple[int, int], float]:
        """Single-head sweep: the score of every head perturbed alone (`halving=True`: see `sweep`)."""
        return self.sweep("halving" if halving else "full", **options)["scores"]

    def sweep(self, method: str = "full", start: int = 2, keep: float = 0.5, min_keep: int = 4) -> dict:
        """Score every single head on the search pairs (`full`), or by successive halving (`halving`, Jamieson
        and Talwalkar 2016): score all heads on `start` pairs, keep the best `keep` share (at least `min_keep`),
        double the pairs for them, repeat until the survivors are scored on all search pairs.

        Returns `scores` ({head: mean over the pairs of the last rung it reached}), `pairs` ({head: how many}),
        `ranking` (best first: survivors of later rungs before heads dropped earlier), `rungs` and `images`."""
        if method not in ("full", "halving"):
            raise ValueError(f"method={method!r} must be 'full' or 'halving'")
        if not (0 < keep < 1 and start >= 1 and min_keep >= 1):
            raise ValueError(
                f"halving needs 0 < keep < 1, start >= 1, min_keep >= 1 (got {keep}, {start}, {min_keep})"
            )
        images, total = self.images, len(self.search_pairs)
        alive, n = self.all_heads(), total if method == "full" else min(start, total)
        scores, reached, rungs = {}, {}, []
        while True:
            rung = self.evaluate([(h,) for h in alive], self.search_pairs[:n])
            scores.update({c[0]: v for c, v in rung.items()})
            reached.update(dict.fromkeys(alive, n))
            rungs.append({"pairs": n, "candidates": len(alive), "images": self.images - images})
            if n == total:
                break
            alive = sorted(alive, key=lambda h: -scores[h])[: max(min_keep, math.ceil(keep * len(alive)))]
            n = min(2 * n, total)
        ranking = sorted(scores, key=lambda h: (-reached[h], -scores[h]))
        return {"method": method, "scores": scores, "pairs": reached, "ranking": ranking, "rungs": rungs,
                "images": self.images - images}  # fmt: skip

    def layer_scores(self) -> dict[int, float]:
        """Layer-level PAG baseline: all heads of one layer perturbed together."""
        cands = {
            layer: tuple((layer, h) for h in range(n)) for layer, n in sorted(self.heads_per_layer.items())
        }
        scores = self.evaluate(list(cands.values()))
        return {layer: scores[c] for layer, c in cands.items()}

    def greedy(self, k: int | None = None, rounds: int | None = None,
               pool: Sequence[tuple[int, int]] | None = None) -> list[dict]:  # fmt: skip
        """Greedy forward selection (the paper's Algorithm 1) with a validation stop.

        Round r = 1..R ranks S ∪ {h} for every remaining h on the search pairs and tries S plus the top k. With
        `early_stop`, the tried set is adopted only if its validation score (search score without a validation
        split) beats the best earlier selection, the unguided images before round 1; else the search stops, and
        if round 1 is not adopted the selection is empty (no heads helped). Without `early_stop` every round is
        adopted. Each record:
        `round`, `added`, `tried`, `score` / `validation` (of the tried set; -inf where a guard objective failed),
        `adopted` and `why` (in words), `selected` / `heads` (the
        adopted selection after the round: `history[-1]["selected"]` is the final one), `images` (so far).
        `self.result` holds the final selection, its scores, the unguided scores and the images generated."""
        k = self.settings.k if k is None else k
        rounds = self.settings.rounds if rounds is None else rounds
        pool, images = list(pool or self.all_heads()), self.images
        selected: list[tuple[int, int]] = []
        best: dict = {"round": 0, "score": self.baseline, "validation": self.baseline_validation}
        history = []
        for r in range(1, rounds + 1):
            remaining = [h for h in pool if h not in selected]
            if not remaining:
                break
            scores = self.evaluate([tuple(sorted([*selected, h])) for h in remaining])
            added = sorted(remaining, key=lambda h: -scores[tuple(sorted([*selected, h]))])[:k]
            tried = tuple(sorted([*selected, *added]))
            record = {"round": r, "added": [label((h,)) for h in added], "tried": list(tried),
                      **self._scores_of(tried)}  # fmt: skip
            record["adopted"] = not self.settings.early_stop or _beats(record, best)
            record["why"] = _why(record, best, self.settings.early_stop)
            if record["adopted"]:
                selected, best = list(tried), record
            record.update(selected=sorted(selected), heads=label(tuple(sorted(selected))), images=self.images)
            history.append(record)
            if not record["adopted"]:
                break
        self.result = self._result(best, selected, history, self.images - images)
        return history

    def _scores_of(self, candidate: Candidate) -> dict:
        """Search-pair and validation-pair scores of one head set (validation None without a split)."""
        valid = self.evaluate([candidate], "validation")[candidate] if self.validation_pairs else None
        return {"score": self.evaluate([candidate])[candidate], "validation": valid}

    def _result(self, best: dict, selected: list, history: list[dict], images: int) -> dict:
        """The greedy's outcome as one JSON-ready dict."""
        return {"selected": sorted(selected), "heads": label(tuple(sorted(selected))), "round": best["round"],
                "score": best["score"], "validation": best["validation"], "images": images, "history": history}  # fmt: skip

    def report(self) -> dict:
        """What this search did: pairs per split, unguided scores, images generated in all (this process), and
        the greedy's result (its `images`: those its rounds generated)."""
        return {"pairs": {"search": len(self.search_pairs), "validation": len(self.validation_pairs)},
                "unguided": self.baseline, "unguided_validation": self.baseline_validation,
                "images": self.images, "result": self.result}  # fmt: skip


def _first_frame(video) -> Image.Image:
    """A video pipeline's (Wan's) video as the image the objective scores: its first frame (PIL, or an array of
    frames with values in [0, 1], channels last as diffusers' "np" output)."""
    if isinstance(video, list):
        return video[0]
    frame = np.asarray(video[0].detach().float().cpu() if isinstance(video, torch.Tensor) else video[0])
    return Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype("uint8"))


def _beats(record: dict, best: dict) -> bool:
    """Whether a round's tried set beats the best selection so far: on validation pairs when there are some."""
    key = "validation" if record["validation"] is not None else "score"
    return record[key] > best[key]


def _why(record: dict, best: dict, early_stop: bool) -> str:
    """Why a round was adopted or not, in words: the score it was judged on against the best earlier one."""
    if not early_stop:
        return "adopted: without early stop every round is"
    key = "validation" if record["validation"] is not None else "score"
    pairs = "validation pairs" if key == "validation" else "search pairs"
    earlier = "the unguided images" if best["round"] == 0 else f"round {best['round']}"
    if not math.isfinite(record[key]):
        return f"not adopted: the guard objective failed on the {pairs}"
    verdict = "adopted" if record["adopted"] else "not adopted"
    compared = "beats" if record["adopted"] else "does not beat"
    return f"{verdict}: {record[key]:.4f} on the {pairs} {compared} {earlier} ({best[key]:.4f})"


# -------------------------------------------------------------------------------------------------------------
# Outputs
# -------------------------------------------------------------------------------------------------------------

GUARD_KEYS = {"score": "guard", "validation": "validation_guard"}


def strict_scores(value):
    """`value` as strict JSON (which has no infinity or NaN; the strict preset reader refuses them): a score of
    -inf (its guard objective failed) or any other non-finite number becomes null, and the object holding it
    says so: `"guard": "failed"` for its `score`, `"validation_guard": "failed"` for its `validation`, and
    `"guard_failed": [keys]` for other keys (a head map's heads)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [strict_scores(v) for v in value]
    if not isinstance(value, dict):
        return value
    out, failed = {}, []
    for key, item in value.items():
        out[key] = strict_scores(item)
        if out[key] is None and isinstance(item, float | np.floating):
            if key in GUARD_KEYS:
                out[GUARD_KEYS[key]] = "failed"
            else:
                failed.append(key)
    return {**out, "guard_failed": failed} if failed else out


MAP_LEFT, MAP_TOP = 56, 64  # where the head map's first cell starts (room for the L / H labels and the title)
GUARD_FAILED_FILL, GUARD_FAILED_MARK = (
    (200, 200, 200),
    (60, 60, 60),
)  # a head whose guard failed: grey, hatched, X


def _diverging(t: float) -> tuple[int, int, int]:
    """t in [-1, 1] as a colour: blue below the baseline, white at it, red above."""
    t = max(-1.0, min(1.0, t))
    if t >= 0:
        return (255, int(255 * (1 - t)), int(255 * (1 - t)))
    return (int(255 * (1 + t)), int(255 * (1 + t)), 255)


def _guard_failed_mark(draw: ImageDraw.ImageDraw, x: int, y: int, size: int) -> None:
    """Grey with diagonal hatching and an X: nothing like any score's colour."""
    draw.rectangle([x, y, x + size - 1, y + size - 1], fill=GUARD_FAILED_FILL)
    for offset in range(-size, size, 6):
        draw.line([(x + max(0, offset), y + max(0, -offset)), (x + min(size, size + offset) - 1,
                   y + min(size, size - offset) - 1)], fill=(150, 150, 150))  # fmt: skip
    draw.line([(x + 3, y + 3), (x + size - 4, y + size - 4)], fill=GUARD_FAILED_MARK, width=2)
    draw.line([(x + 3, y + size - 4), (x + size - 4, y + 3)], fill=GUARD_FAILED_MARK, width=2)


def heatmap(scores: dict[tuple[int, int], float], baseline: float, path: str | Path, cell: int = 32,
            title: str | None = None) -> Path:  # fmt: skip
    """The head map, the one picture of it (the command's headmap.png and the demo's): a layers x heads PNG of
    score - baseline (blue below, white at the baseline, red above), `cell` px a head, titled with `title` (the
    objective's name) where given, with a legend: the colour scale with its values, and the mark of a head whose
    guard objective failed (its score -inf: grey, hatched, crossed), which no score's colour resembles, with how
    many heads failed."""
    from PIL import ImageFont

    layers = sorted({layer for layer, _ in scores})
    heads = sorted({head for _, head in scores})
    finite = [v - baseline for v in scores.values() if math.isfinite(v)]
    failed = len(scores) - len(finite)
    span = max((abs(v) for v in finite), default=1.0) or 1.0
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    bar_x, bar_h = MAP_LEFT + cell * len(heads) + 28, 200
    lines = [f"score - unguided ({baseline:.4g}), per head: red raises it, blue lowers it"]
    if title is not None:
        lines.insert(0, f"Head map: {title}, each head perturbed alone")
    failed_text = f"guard failed (score -inf): {failed} head(s)"
    width = max(bar_x + 150, bar_x + 36 + round(small.getlength(failed_text)), 480,
                16 + max(round(font.getlength(line)) for line in lines))  # fmt: skip
    height = max(MAP_TOP + cell * len(layers) + 16, MAP_TOP + bar_h + 70)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((8, 6 + 18 * i), line, fill="black", font=font)
    for (layer, head), value in scores.items():
        x, y = MAP_LEFT + heads.index(head) * cell, MAP_TOP + layers.index(layer) * cell
        if math.isfinite(value):
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=_diverging((value - baseline) / span))
        else:
            _guard_failed_mark(draw, x, y, cell)
    for i, head in enumerate(heads):
        draw.text(
            (MAP_LEFT + i * cell + cell // 2, MAP_TOP - 6), f"H{head}", fill="black", font=small, anchor="mb"
        )
    for i, layer in enumerate(layers):
        draw.text(
            (MAP_LEFT - 6, MAP_TOP + i * cell + cell // 2), f"L{layer}", fill="black", font=small, anchor="rm"
        )
    # Legend: the colour scale from +span (top) to -span (bottom), its values, then the guard-failed mark.
    for row in range(bar_h):
        draw.line(
            [(bar_x, MAP_TOP + row), (bar_x + 19, MAP_TOP + row)], fill=_diverging(1 - 2 * row / (bar_h - 1))
        )
    draw.rectangle([bar_x, MAP_TOP, bar_x + 19, MAP_TOP + bar_h - 1], outline="black")
    for t in (1.0, 0.5, 0.0, -0.5, -1.0):
        y = MAP_TOP + round((1 - t) / 2 * (bar_h - 1))
        draw.line([(bar_x + 20, y), (bar_x + 24, y)], fill="black")
        text = "0 (unguided)" if t == 0 else f"{t * span:+.3g}"
        draw.text((bar_x + 28, y), text, fill="black", font=small, anchor="lm")
    draw.text((bar_x, MAP_TOP - 22), "score - unguided", fill="black", font=small)
    _guard_failed_mark(draw, bar_x, MAP_TOP + bar_h + 16, 20)
    draw.text((bar_x + 28, MAP_TOP + bar_h + 26), failed_text, fill="black", font=small, anchor="lm")
    path = Path(path)
    image.save(path)
    return path


def preset(selected: Sequence[tuple[int, int]], settings: SearchSettings, use_strength: float, scores: dict,
           name: str = "searched", layout=None) -> HeadSelection:  # fmt: skip
    """The found heads as a preset: heads at the use strength, the search settings and scores as metadata; with the
    searched model's `layout`, its architecture and layers x heads (checked when the preset is applied)."""
    group = HeadGroup(
        tuple(HeadEntry(layer, head, use_strength) for layer, head in selected), name, settings.pag_scale
    )
    meta = {"model": settings.model, "objective": settings.objective, "source": "headhunter search (measured)",
            "search": {k: v for k, v in asdict(settings).items() if k not in ("prompts", "model", "objective")},
            "prompts": settings.prompts, "scores": strict_scores(scores)}  # fmt: skip
    if layout is not None:
        meta["architecture"] = layout.arch
        meta["layers_x_heads"] = [layout.num_layers, max(layout.heads_per_layer["attn"].values())]
    return HeadSelection((group,), meta)
