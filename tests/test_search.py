"""Head search on a tiny SD3: batched candidates, cache and resume, greedy rounds, constrained objectives."""

import json

import numpy as np
import pytest
from PIL import Image

from guidance.objectives import Constrained, Objective, get_objective
from guidance.search import (
    SEARCH_PROFILES,
    HeadSearch,
    SearchSettings,
    heatmap,
    label,
    preset,
    search_profile,
)
from pipelines.headhunter import HeadHunterPipeline


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    pipe = HeadHunterPipeline.from_pretrained(tiny_folder("sd3"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Counting(Objective):
    """Mean red channel, counting how many images it scored."""

    def __init__(self):
        super().__init__("red", lambda images, prompts: [np.asarray(i)[..., 0].mean() / 255 for i in images])
        self.seen = 0

    def __call__(self, images, prompts):
        self.seen += len(images)
        return super().__call__(images, prompts)


def settings(**kwargs):
    return SearchSettings(**{"prompts": ["a red circle", "a blue square"], "seeds": [0, 1], "steps": 2, "size": 32,
                             "batch": 8, **kwargs})  # fmt: skip


def test_head_map_batched_equals_one_by_one_and_resumes(pipe, tmp_path):
    objective = Counting()
    search = HeadSearch(pipe, objective, settings(batch=12), cache=tmp_path, progress=False)
    heads = search.head_map()
    # 4 pairs: 1 held out for validation (floor(0.25 * 4)); the sweep ranks on the 3 search pairs.
    assert len(search.search_pairs) == 3 and len(search.validation_pairs) == 1
    assert len(heads) == 4 * 4 and objective.seen == 4 + 16 * 3 == search.images
    one = HeadSearch(pipe, Counting(), settings(batch=1), progress=False)
    single = one.evaluate([((1, 2),), ((3, 0),)])
    for cand, value in single.items():
        assert value == pytest.approx(heads[cand[0]], abs=1e-5)
    # Resume: a new search on the same cache scores nothing again.
    again = Counting()
    resumed = HeadSearch(pipe, again, settings(batch=12), cache=tmp_path, progress=False)
    assert resumed.head_map() == heads and again.seen == 0
    # Another setting (strength) is another cache key.
    other = Counting()
    HeadSearch(pipe, other, settings(batch=12, strength=0.5), cache=tmp_path, progress=False).evaluate(
        [((0, 0),)]
    )
    assert other.seen == 4 + 3


def test_interrupted_search_recomputes_only_missing_pairs(pipe, tmp_path):
    class Failing(Counting):
        def __call__(self, images, prompts):
            if self.seen >= 8:
                raise KeyboardInterrupt
            return super().__call__(images, prompts)

    with pytest.raises(KeyboardInterrupt):
        HeadSearch(pipe, Failing(), settings(batch=4, validation=0), cache=tmp_path, progress=False).evaluate(
            [((1, 0),), ((2, 1),)]
        )
    objective = Counting()
    HeadSearch(pipe, objective, settings(batch=4, validation=0), cache=tmp_path, progress=False).evaluate(
        [((1, 0),), ((2, 1),)]
    )
    assert objective.seen == 4  # baseline (4 pairs) and candidate (1, 0) were cached; (2, 1) is recomputed


def test_greedy_rounds_and_layer_baseline(pipe):
    search = HeadSearch(pipe, Counting(), settings(early_stop=False), progress=False)
    history = search.greedy(k=2, rounds=2, pool=[(1, 0), (1, 1), (2, 0), (2, 1), (3, 3)])
    assert len(history) == 2 and len(history[1]["heads"].split(",")) == 4
    assert [r["round"] for r in history] == [1, 2] and all(r["adopted"] for r in history)
    assert search.result["selected"] == history[-1]["selected"] and search.result["round"] == 2
    assert history[-1]["images"] == search.images and search.report()["images"] == search.images
    first = search.evaluate([((h,)) for h in [(1, 0), (1, 1), (2, 0), (2, 1), (3, 3)]])
    top2 = sorted(first, key=lambda c: -first[c])[:2]
    assert set(history[0]["added"]) == {label(c) for c in top2}
    layers = search.layer_scores()
    assert sorted(layers) == [0, 1, 2, 3]


def test_greedy_stops_when_validation_stops_improving(pipe):
    """Heads (1, x) raise the score on the search pairs only (overfit): round 2 tries them and is not adopted."""
    search = HeadSearch(pipe, Counting(), settings(), progress=False)

    def fake(candidates, pairs="search"):
        general = {(0, 0): 0.3, (0, 1): 0.2}
        overfit = {(1, 0): 0.1, (1, 1): 0.05} if pairs == "search" else {(1, 0): -0.5, (1, 1): -0.5}
        return {c: sum({**general, **overfit}.get(h, 0.0) for h in c) for c in candidates}

    search.evaluate = fake
    search.baseline = search.baseline_validation = 0.0  # unguided scores 0, so the fake scores are gains
    history = search.greedy(k=2, rounds=3, pool=[(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)])
    assert [r["round"] for r in history] == [1, 2] and [r["adopted"] for r in history] == [True, False]
    assert history[0]["added"] == ["L0H0", "L0H1"] and history[0]["validation"] == pytest.approx(0.5)
    assert history[1]["added"] == ["L1H0", "L1H1"] and history[1]["score"] == pytest.approx(0.65)
    assert history[1]["tried"] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert history[1]["validation"] == pytest.approx(-0.5)  # better on the search pairs, worse on validation
    assert history[-1]["selected"] == [(0, 0), (0, 1)] == search.result["selected"]
    assert search.result["round"] == 1 and search.result["validation"] == pytest.approx(0.5)


def test_greedy_adopts_nothing_when_round_one_is_worse_than_unguided(pipe):
    """Every head lowers the validation score: round 1 is tried, not adopted, and the selection is empty."""
    search = HeadSearch(pipe, Counting(), settings(), progress=False)
    unguided = search.baseline_validation

    def fake(candidates, pairs="search"):
        gain = 0.1 if pairs == "search" else -0.1  # helps the search pairs, harms the held-out ones
        return {c: (search.baseline if pairs == "search" else unguided) + gain * len(c) for c in candidates}

    search.evaluate = fake
    history = search.greedy(k=2, rounds=3, pool=[(0, 0), (0, 1), (1, 0)])
    assert [r["adopted"] for r in history] == [False] and history[0]["tried"] == [(0, 0), (0, 1)]
    assert search.result["selected"] == [] and search.result["round"] == 0
    assert search.result["validation"] == pytest.approx(unguided)


def test_successive_halving_rungs_and_image_count(pipe):
    search = HeadSearch(pipe, Counting(), settings(validation=0), progress=False)
    images = search.images
    halving = search.sweep("halving", start=1, keep=0.5, min_keep=2)
    assert [(r["pairs"], r["candidates"]) for r in halving["rungs"]] == [(1, 16), (2, 8), (4, 4)]
    assert halving["images"] == search.images - images == 16 * 1 + 8 * 1 + 4 * 2  # cached pairs not redone
    survivors = halving["ranking"][:4]
    full = search.evaluate([(h,) for h in survivors])  # on all 4 search pairs: all cached
    assert search.images - images == halving["images"]
    assert [halving["scores"][h] for h in survivors] == [full[(h,)] for h in survivors]
    assert survivors == sorted(survivors, key=lambda h: -full[(h,)])
    assert all(halving["pairs"][h] == 4 for h in survivors) and len(halving["scores"]) == 16
    with pytest.raises(ValueError, match="method='fast' must be"):
        search.sweep("fast")


def test_constrained_objective_excludes_candidates_that_break_the_guard():
    target = Objective("t", lambda images, prompts: [1.0] * len(images))
    guard = Objective("g", lambda images, prompts: [0.0] * len(images))
    obj = Constrained(target, guard, max_drop=0.05)
    obj.fit_baseline(np.array([[0.0, 0.5], [0.0, 0.7]]))
    assert obj.candidate_score(np.array([[2.0, 0.6], [2.0, 0.6]])) == 2.0
    assert obj.candidate_score(np.array([[3.0, 0.5], [3.0, 0.5]])) == -np.inf


def test_constrained_absolute_relative_and_nested_thresholds():
    target = Objective("t", lambda images, prompts: [1.0] * len(images))
    guard = Objective("g", lambda images, prompts: [0.0] * len(images))
    absolute = Constrained(target, guard, min_score=20.0)  # the paper: PickScore >= 20, no baseline needed
    assert absolute.candidate_score(np.array([[2.0, 20.5], [2.0, 19.9]])) == 2.0
    assert absolute.candidate_score(np.array([[2.0, 19.0], [2.0, 19.9]])) == -np.inf
    both = Constrained(target, guard, max_drop=1.0, min_score=20.0)
    both.fit_baseline(np.array([[0.0, 22.0], [0.0, 22.0]]))
    assert both.candidate_score(np.array([[2.0, 20.5]])) == -np.inf  # above 20 but 1.5 below unguided
    assert both.candidate_score(np.array([[2.0, 21.5]])) == 2.0
    # Two guards (PickScore >= 20 and aesthetic >= 6): columns [target, pickscore, aesthetic].
    two = Constrained(Constrained(target, guard, min_score=20.0), guard, min_score=6.0)
    assert two.candidate_score(np.array([[3.0, 21.0, 6.5]])) == 3.0
    assert two.candidate_score(np.array([[3.0, 21.0, 5.5]])) == -np.inf
    assert two.candidate_score(np.array([[3.0, 19.0, 6.5]])) == -np.inf
    with pytest.raises(ValueError, match="max_drop .* or min_score"):
        Constrained(target, guard)
    assert get_objective("darkness", "brightness", min_score=20).name == "darkness|brightness>=20"


def test_profiles_paper_and_ours():
    paper = SearchSettings.from_profile(
        "paper", "flux", ["a"], [0], defaults={"steps": 28, "guidance_scale": 3.5}
    )
    assert (paper.guidance_scale, paper.pag_scale, paper.steps, paper.size) == (0.0, 8.0, 15, 512)
    assert (paper.k, paper.rounds, paper.strength, paper.profile) == (3, 5, 1.0, "paper")
    sd3 = SearchSettings.from_profile("paper", "sd3", ["a"], [0], defaults={"steps": 28}, steps=None, k=2)
    assert (sd3.guidance_scale, sd3.pag_scale, sd3.steps, sd3.k) == (
        0.0,
        3.0,
        28,
        2,
    )  # user > profile > model
    ours = SearchSettings.from_profile("ours", "unet", ["a"], [0], defaults={"guidance_scale": 3.0})
    assert (ours.guidance_scale, ours.k, ours.rounds, ours.validation) == (3.0, 4, 1, 0.25)
    assert search_profile("paper", "sd3").min_score("pickscore:some/model") == 20.0
    assert search_profile("paper", "sd3").clip_prefix == "A photo depicts "
    assert sorted(SEARCH_PROFILES) == ["ours", "paper"]
    with pytest.raises(ValueError, match="profile='best' is unknown"):
        search_profile("best", "sd3")
    # The greedy's knobs are not part of the cache key; the scoring settings are.
    assert ours.key() == SearchSettings(["a"], [0], guidance_scale=3.0, k=9, rounds=7, validation=0.5).key()
    assert ours.key() != SearchSettings(["a"], [0], guidance_scale=0.0).key()


def test_builtin_objectives_and_errors():
    red = Image.new("RGB", (16, 16), (230, 20, 20))
    assert get_objective("saturation")([red], ["x"])[0] > 0.8
    assert get_objective("toy-dark")([Image.new("RGB", (16, 16), (20, 20, 20))], ["x"])[0] > 0.9
    with pytest.raises(ValueError, match="objective='beauty' is unknown"):
        get_objective("beauty")


def test_clip_and_pickscore_objectives_from_local_folder(tmp_path):
    """Real loading code on a tiny random CLIP saved to disk (no hub)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipelines.tokenizers import clip_tokenizer

    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(tmp_path)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), tokenizer)
    processor.save_pretrained(tmp_path)
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    clip = get_objective(f"clip:{tmp_path}")(images, ["a red circle", "a blue square"])
    pick = get_objective(f"pickscore:{tmp_path}")(images, ["a red circle", "a blue square"])
    assert clip.shape == pick.shape == (2,) and np.all(clip >= 0) and np.all(np.isfinite(pick))


def test_outputs(tmp_path):
    from guidance.search import GUARD_FAILED_FILL, GUARD_FAILED_MARK, MAP_LEFT, MAP_TOP

    scores = {(0, 0): 0.5, (0, 1): 0.7, (1, 0): 0.2, (1, 1): -np.inf}
    png = heatmap(scores, 0.5, tmp_path / "map.png")
    image = Image.open(png).convert("RGB")
    cell = 32

    def centre(layer: int, head: int) -> tuple[int, int]:
        return MAP_LEFT + head * cell + cell // 2, MAP_TOP + layer * cell + cell // 2

    assert image.getpixel(centre(0, 1)) == (255, 85, 85)  # L0H1 +0.2 of span 0.3: red
    assert image.getpixel(centre(1, 0)) == (0, 0, 255)  # L1H0 -0.3, the span: full blue
    assert image.getpixel(centre(0, 0)) == (255, 255, 255)  # at the baseline: white
    # A head whose guard failed is grey, hatched and crossed: not the full blue of "hurts most".
    x, y = MAP_LEFT + cell, MAP_TOP + cell
    failed = {image.getpixel((x + i, y + j)) for i in range(cell) for j in range(cell)}
    assert GUARD_FAILED_FILL in failed and GUARD_FAILED_MARK in failed and (0, 0, 255) not in failed
    # The legend: a colour scale from +span (red, top) to -span (blue, bottom) right of the map, and the mark.
    legend = [image.getpixel((px, MAP_TOP + 100)) for px in range(MAP_LEFT + 2 * cell, image.width)]
    assert image.width >= 480 and image.height >= MAP_TOP + 200
    bar_x = MAP_LEFT + 2 * cell + 28
    top, bottom = image.getpixel((bar_x + 10, MAP_TOP + 2)), image.getpixel((bar_x + 10, MAP_TOP + 197))
    assert top[0] == 255 and max(top[1:]) < 10 and bottom[2] == 255 and max(bottom[:2]) < 10
    assert any(p != (255, 255, 255) for p in legend)
    marks = {image.getpixel((bar_x + i, MAP_TOP + 216 + j)) for i in range(20) for j in range(20)}
    assert GUARD_FAILED_FILL in marks and GUARD_FAILED_MARK in marks
    # Untitled (the benchmark's): one line of words above the map; titled (the command's and the demo's, with the
    # objective's name): two, the picture widened to the title, the map and legend where they were.
    assert min(image.crop((8, 24, 300, 40)).convert("L").getdata()) > 200
    long = "saturation (guard brightness >= 2) " * 2
    titled = Image.open(heatmap(scores, 0.5, tmp_path / "titled.png", title=long)).convert("RGB")
    assert min(titled.crop((8, 24, 300, 40)).convert("L").getdata()) < 100
    assert (
        titled.width > image.width
        and min(titled.crop((titled.width - 40, 4, titled.width, 24)).convert("L").getdata()) < 100
    )
    assert (
        titled.crop((0, MAP_TOP - 8, image.width, image.height)).tobytes()
        == image.crop((0, MAP_TOP - 8, image.width, image.height)).tobytes()
    )
    sel = preset([(0, 1), (1, 1)], settings(model="tiny", objective="red"), 0.5, {"best": 0.7})
    path = sel.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["groups"][0]["heads"] == [
        {"layer": 0, "head": 1, "strength": 0.5},
        {"layer": 1, "head": 1, "strength": 0.5},
    ]
    assert data["objective"] == "red" and data["search"]["steps"] == 2


def test_two_processes_with_accelerate_split_candidates(tiny_folder, tmp_path):
    """`accelerate launch` with 2 CPU processes: each rank scores its share; the result equals one process."""
    import os
    import subprocess
    import sys

    def run(out, launcher):
        cmd = [*launcher, "-m", "tools.cli", "search", "--model", tiny_folder("sd3"), "--objective",
               "saturation", "--prompt", "a red circle", "--seeds", "0", "1", "--k", "2", "--sweep", "--steps", "2",
               "--size", "32", "--out", str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
        return json.loads((out / "preset.json").read_text())

    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    two = run(tmp_path / "two", accelerate)
    one = run(tmp_path / "one", [sys.executable])
    caches = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "two" / "cache").glob("*.json"))
    assert caches == ["rank0.json", "rank1.json"]
    rank1 = json.loads(next((tmp_path / "two" / "cache").glob("*rank1.json")).read_text())
    assert 1 < len(rank1) < 16, "rank 1 scored a share of the 16 heads, not all"
    assert two["groups"] == one["groups"]
    for head, value in one["scores"]["head_map"].items():
        assert two["scores"]["head_map"][head] == pytest.approx(value, abs=1e-6)


def test_search_on_a_generic_family_enumerates_its_heads_and_presets_record_the_shape(tmp_path):
    """A head search on a newer family (Chroma, through the generic adapter): its heads, a profile, and a preset that
    records the family and layers x heads, refused on a model of another shape."""
    from fixtures.tiny_families import tiny_chroma
    from guidance.heads import HeadSelectionError
    from guidance.search import SEARCH_PROFILES
    from pipelines import HeadHunterPipeline

    tiny_chroma().save_pretrained(tmp_path / "chroma")
    pipe = HeadHunterPipeline.from_pretrained(tmp_path / "chroma")
    pipe.set_progress_bar_config(disable=True)
    settings = SearchSettings(prompts=["a red circle"], seeds=[0], steps=2, size=16, guidance_scale=1.0,
                              validation=0.0, extra={"max_sequence_length": 8})  # fmt: skip
    search = HeadSearch(pipe, Objective("brightness", lambda images, prompts: [0.0] * len(images)), settings)
    layout = search.layout
    assert layout.arch == "chroma" and "chroma" in SEARCH_PROFILES["paper"]
    assert search.all_heads() == [
        (site.layer, h) for site in layout.sites.values() for h in range(site.heads)
    ]
    found = preset([(1, 0)], settings, 0.5, {}, layout=layout)
    assert found.metadata["architecture"] == "chroma"
    assert found.metadata["layers_x_heads"] == [
        layout.num_layers,
        max(layout.heads_per_layer["attn"].values()),
    ]
    found.validate(layout.heads_per_layer)
    other = {"attn": {i: 8 for i in range(layout.num_layers + 1)}}
    with pytest.raises(HeadSelectionError, match="this preset is for"):
        found.validate(other)
