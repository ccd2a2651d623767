"""Batch jobs: validation with line numbers, resume after a kill, identical reruns, metadata, two ranks."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import tools.batch as batch_module
from tools.batch import JobFileError, plan
from tools.cli import main
from tools.settings import save_png

LAYOUT = {"attn": {layer: 4 for layer in range(4)}, "attn2": {}}


def write_jobs(path, jobs):
    path.write_text("\n".join(j if isinstance(j, str) else json.dumps(j) for j in jobs) + "\n")
    return path


def test_validation_lists_every_problem_with_line_numbers(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"prompt": "a red circle", "seed": 1},
        {"prompt": "a blue square", "colour": "red"},
        "{not json",
        {"prompt": "x", "num_inference_steps": 0},
        {"prompt": "x", "pag_heads": "L9H0"},
        {"prompt": "x", "pag_heads": "missing.json"},
        {"seed": 3},
        {"prompt": "y", "id": "a"},
        {"prompt": "z", "id": "a"},
        {"prompt": "x", "guidance_scale": "high"},
    ])  # fmt: skip
    with pytest.raises(JobFileError) as info:
        plan(jobs, {}, LAYOUT)
    assert sorted({n for n, _ in info.value.problems}) == [2, 3, 4, 5, 6, 7, 9, 10]
    text = str(info.value)
    assert "line 2: unknown key 'colour'" in text and "line 3: not valid JSON" in text
    assert "line 4: num_inference_steps=0 is out of range; allowed: an integer in [1, 1000]" in text
    assert "line 5: pag_heads: entry L9H0: layer 9 is out of range" in text
    assert "line 6: pag_heads: preset file 'missing.json' does not exist" in text
    assert "line 7: missing key 'prompt'" in text and "line 9: id 'a' repeats line 8" in text
    assert "line 10: guidance_scale='high' must be a finite number" in text
    items, problems = plan(jobs, {}, LAYOUT, skip_invalid=True)
    assert [i.line for i in items] == [1, 8] and len(problems) == 8


def test_ids_seeds_and_csv(tmp_path):
    jobs = write_jobs(tmp_path / "j.jsonl", [{"prompt": "a", "seed": 5, "num_images": 3}, {"prompt": "b"}])
    items, _ = plan(jobs, {"num_inference_steps": 2}, LAYOUT)
    assert [i.seed for i in items[:3]] == [5, 6, 7] and items[0].id.endswith("-0")
    again, _ = plan(jobs, {"num_inference_steps": 2}, LAYOUT)
    assert [i.id for i in again] == [i.id for i in items] and again[3].seed == items[3].seed
    csv = tmp_path / "j.csv"
    csv.write_text("id,prompt,seed,guidance_scale\nfirst,a red circle,4,3.5\nsecond,a blue square,,\n")
    items, _ = plan(csv, {}, LAYOUT)
    assert [(i.id, i.seed, i.settings["guidance_scale"]) for i in items][0] == ("first-0", 4, 3.5)


def _cli(tiny, jobs, out, *extra):
    return ["batch", str(jobs), "--out", str(out), "--model", tiny, "--steps", "2", "--height", "32", "--width",
            "32", "--quiet", *extra]  # fmt: skip


def test_run_writes_pngs_manifest_and_is_identical_on_rerun(tiny_folder, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"prompt": "a red circle", "seed": 1, "num_images": 2, "pag_heads": "L1H0"},
        {"id": "plain", "prompt": "a blue square", "seed": 2},
    ])  # fmt: skip
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "a")) == 0
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "b", "--batch-size", "1")) == 0
    records = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    plain = next(r for r in records if r["id"] == "plain-0")
    assert plain["seed"] == 2 and plain["num_inference_steps"] == 2
    assert plain["model"] == os.path.relpath(tiny_folder("sd3")) and not os.path.isabs(plain["model"])
    image = Image.open(tmp_path / "a" / "plain-0.png")
    assert (
        image.text["parameters"].startswith("a blue square\n")
        and json.loads(image.text["headhunter"])["seed"] == 2
    )
    # A rerun skips everything.
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "a")) == 0
    assert len((tmp_path / "a" / "manifest.jsonl").read_text().splitlines()) == 3
    # Same seeds, other batch size: the same images (8-bit PNGs, at most 1 level apart from float noise).
    for r in records:
        a = np.asarray(Image.open(tmp_path / "a" / r["file"]), dtype=int)
        b = np.asarray(Image.open(tmp_path / "b" / r["file"]), dtype=int)
        assert np.abs(a - b).max() <= 1


def test_invalid_file_runs_nothing(tiny_folder, tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "ok"}, {"prompt": "bad", "pag_strength": 2}])
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "out")) == 2
    assert "line 2: pag_strength=2 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "out", "--skip-invalid")) == 1
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_resume_after_kill_yields_every_item_once(tiny_folder, tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"prompt": f"a red circle {i}", "seed": i} for i in range(24)]
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tools.cli", *_cli(tiny_folder("sd3"), jobs, out, "--batch-size", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not manifest.exists() or len(manifest.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(manifest.read_text().splitlines())
    assert 3 <= before < 24, "the kill should land mid-run"
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 24
    assert sorted(p.name for p in out.glob("*.png")) == sorted(r["file"] for r in records)
    assert not list(out.glob(".*.tmp"))


def test_two_ranks_split_items_and_merge_manifests(tiny_folder, tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"prompt": f"a blue square {i}", "seed": i} for i in range(6)]
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tools.cli",
           *_cli(tiny_folder("sd3"), jobs, out)]  # fmt: skip
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 0: 3 generated" in result.stdout and "rank 1: 3 generated" in result.stdout
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted({r["id"] for r in records}) and len(records) == 6
    assert not list(out.glob("manifest.rank*.jsonl"))


# -- fault injection: a run stopped at chosen points, then resumed -------------------------------------------


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so the runner's per-group error handling does not catch it."""


def _kill_on(calls: int, real):
    """A wrapper of `real` that raises Killed on its `calls`-th call (1-based)."""
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise Killed
        return real(*args, **kwargs)

    return wrapper


def _tmp_left_behind(image, path, *args):
    """save_png killed after writing its temporary file, before the rename."""
    path.with_name(f".{path.name}.tmp").write_bytes(b"partial")
    raise Killed


def _half_record(self, record):
    """A manifest line cut by a kill: half the JSON, no newline."""
    with self.manifest.open("a") as f:
        f.write(json.dumps(record)[:20])
    raise Killed


KILL_POINTS = {
    "before the first group": lambda mp, runner: mp.setattr(
        runner, "_generate", _kill_on(1, runner._generate)
    ),
    "before the second group": lambda mp, runner: mp.setattr(
        runner, "_generate", _kill_on(2, runner._generate)
    ),
    "inside a partly written group": lambda mp, _: mp.setattr(
        batch_module, "save_png", _kill_on(2, save_png)
    ),
    "between temporary file and rename": lambda mp, _: mp.setattr("tools.batch.save_png", _tmp_left_behind),
    "after a PNG, before its manifest line": lambda mp, runner: mp.setattr(
        runner, "_record", _kill_on(3, runner._record)
    ),
    "halfway through a manifest line": lambda mp, runner: mp.setattr(
        runner, "_record", lambda record: _half_record(runner, record)
    ),
}


@pytest.fixture(scope="module")
def tiny_pipe():
    from fixtures.tiny import TINY_PIPELINES
    from pipelines.headhunter import HeadHunterPipeline

    pipe = HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def fault_plan(tmp_path_factory, tiny_pipe):
    """Six items in groups of three (two settings), and the images of an uninterrupted run."""
    from tools.batch import BatchRunner

    folder = tmp_path_factory.mktemp("faults")
    jobs = write_jobs(folder / "jobs.jsonl", [
        {"prompt": f"a red circle {i}", "seed": i, **({"pag_heads": "L1H1"} if i >= 3 else {})} for i in range(6)
    ])  # fmt: skip
    items, _ = plan(jobs, {"num_inference_steps": 1, "height": 32, "width": 32}, LAYOUT)
    BatchRunner(tiny_pipe, "tiny", folder / "reference", 3).run(items, progress=False)
    return items, {i.file: np.asarray(Image.open(folder / "reference" / i.file)) for i in items}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_run_resumes_to_the_uninterrupted_images(point, fault_plan, tiny_pipe, tmp_path, monkeypatch):
    """Every item exactly once, no temporary files, manifest equal to the files, images bit-identical."""
    from tools.batch import BatchRunner

    items, reference = fault_plan
    runner = BatchRunner(tiny_pipe, "tiny", tmp_path, 3)
    with monkeypatch.context() as mp:
        KILL_POINTS[point](mp, runner)
        with pytest.raises(Killed):
            runner.run(items, progress=False)
    counts = BatchRunner(tiny_pipe, "tiny", tmp_path, 3).run(items, progress=False)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    ok = [r["id"] for r in records if r["status"] == "ok"]
    assert sorted(ok) == sorted(i.id for i in items) and len(records) == len(items), point
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(r["file"] for r in records)
    assert not list(tmp_path.glob(".*.tmp"))
    assert counts["ok"] + counts["done_before"] == len(items)
    for file, image in reference.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / file)), image), (point, file)


def test_batch_size_changes_pixels_by_at_most_one_level(fault_plan, tiny_pipe, tmp_path):
    """The documented tolerance (docs/reliability.md): another batch size moves 8-bit pixels by at most 1."""
    from tools.batch import BatchRunner

    items, reference = fault_plan
    BatchRunner(tiny_pipe, "tiny", tmp_path, 1).run(items, progress=False)
    for file, image in reference.items():
        alone = np.asarray(Image.open(tmp_path / file), dtype=int)
        assert np.abs(alone - image.astype(int)).max() <= 1, file


def test_csv_keeps_strings_and_converts_numeric_fields(tmp_path):
    csv = tmp_path / "jobs.csv"
    csv.write_text('id,prompt,negative_prompt,seed,guidance_scale\n007,1984,0,12,4\n"x.1","a, b",,,\n')
    items, _ = plan(csv, {}, LAYOUT)
    first, second = items[0], items[1]
    assert (
        first.id == "007-0"
        and first.settings["prompt"] == "1984"
        and first.settings["negative_prompt"] == "0"
    )
    assert first.seed == 12 and first.settings["guidance_scale"] == 4.0
    assert second.id == "x.1-0" and second.settings["prompt"] == "a, b"


def test_job_file_problems_are_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import tools.cli as cli

    monkeypatch.setattr(cli, "_load", lambda *a: pytest.fail("the model must not load"))
    for content, message in [(None, "no such file"), ("", "holds no jobs"), (b"\0\1", "a binary file")]:
        jobs = tmp_path / "jobs.jsonl"
        jobs.unlink(missing_ok=True)
        if content is not None:
            jobs.write_bytes(content if isinstance(content, bytes) else content.encode())
        assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{jobs}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- formats read by their own rules ---------------------------------------------------------------------------


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """U+2028, U+2029 and U+0085 are legal inside JSON strings; `str.splitlines` would cut a line at them."""
    prompts = ["a red\u2028circle", "a blue\x85square", "a green\u2029triangle"]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\r\n".join(json.dumps({"prompt": p}, ensure_ascii=False) for p in prompts), newline="")
    items, problems = plan(jobs, {}, LAYOUT)
    assert [(i.line, i.settings["prompt"]) for i in items] == [
        (1, prompts[0]),
        (2, prompts[1]),
        (3, prompts[2]),
    ]
    assert problems == []


def test_csv_rows_are_read_by_the_csv_module(tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text('id,prompt\r\na,a red\u2028circle\r\nb,"a blue\nsquare"\r\nc,a\x85b\r\n', newline="")
    items, _ = plan(jobs, {}, LAYOUT)
    assert [(i.id, i.settings["prompt"]) for i in items] == [
        ("a-0", "a red\u2028circle"), ("b-0", "a blue\nsquare"), ("c-0", "a\x85b")]  # fmt: skip


def test_long_integers_nan_and_deep_nesting_are_refused_by_line_and_field(tmp_path):
    """A 5000-digit integer would raise Python's digit-limit error (no line, no field) if it were converted."""
    huge = "7" * 5000
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([
        '{"prompt": "a red circle", "seed": 1}',
        f'{{"prompt": "x", "seed": {huge}}}',
        f'{{"prompt": "x", "pag_heads": [[1, -{huge}]]}}',
        '{"prompt": "x", "guidance_scale": NaN, "pag_scale": -Infinity}',
        '{"prompt": "x", "pag_heads": ' + "[" * 20 + "]" * 20 + "}",
    ]))  # fmt: skip
    with pytest.raises(JobFileError) as info:
        plan(jobs, {}, LAYOUT)
    text = str(info.value)
    assert "line 2: seed=777777777777... (5000 digits) is too long; allowed: at most 64 digits" in text
    assert "line 3: pag_heads[0][1]=-77777777777... (5000 digits) is too long" in text
    assert (
        "line 4: guidance_scale=nan is not JSON (NaN)" in text
        and "pag_scale=-inf is not JSON (-Infinity)" in text
    )
    assert "line 5: pag_heads: nested deeper than 16 levels" in text
    assert len(text) < 2000 and "Exceeds the limit" not in text
    items, problems = plan(jobs, {}, LAYOUT, skip_invalid=True)
    assert [i.line for i in items] == [1] and sorted({n for n, _ in problems}) == [2, 3, 4, 5]
    csv = tmp_path / "jobs.csv"
    csv.write_text(f"prompt,seed,num_images\na,1,1\nb,{huge},-{huge}\n")
    with pytest.raises(JobFileError) as info:
        plan(csv, {}, LAYOUT)
    assert (
        "line 3: seed=777777777777... (5000 digits) is too long; allowed: at most 64 digits; "
        "num_images=-77777777777... (5000 digits) is too long" in str(info.value)
    )
