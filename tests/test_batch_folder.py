"""Batch output folders owned by one run: the lock, no writes through links, resume that checks what it resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tools.batch import folder_lock
from tools.cli import main

JOBS = [{"id": "a", "prompt": "a red circle", "seed": 1}, {"id": "b", "prompt": "a blue square", "seed": 2}]


def _jobs(path, jobs):
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def _cli(model, jobs, out, *extra):
    return ["batch", str(jobs), "--out", str(out), "--model", model, "--steps", "2", "--height", "32", "--width",
            "32", "--batch-size", "1", "--quiet", *extra]  # fmt: skip


def _records(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _pixels(path):
    return np.asarray(Image.open(path))


def test_a_second_run_on_a_held_folder_is_refused_naming_the_first(tiny_folder, tmp_path, capsys):
    """Two real processes on one --out: the second stops before any work with exit 2 and the first's pid."""
    jobs = _jobs(tmp_path / "jobs.jsonl", [{"prompt": f"a red circle {i}", "seed": i} for i in range(200)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tools.cli", *_cli(tiny_folder("sd3"), jobs, out)]
    first = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "manifest.jsonl").exists():
            time.sleep(0.05)
        assert main(_cli(tiny_folder("sd3"), jobs, out)) == 2
        assert first.poll() is None, "the first run should still hold the folder"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    err = capsys.readouterr().err
    assert f"is in use by another batch run (pid {first.pid} on " in err and "choose another --out" in err
    assert "Traceback" not in err and sum(line.startswith("headhunter") for line in err.splitlines()) == 1
    ids = [r["id"] for r in _records(out)]
    assert len(ids) == len(set(ids)), "the refused run wrote nothing"
    with folder_lock(out):  # a killed holder leaves no lock behind
        pass


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_linked_manifest_is_refused_and_what_it_points_to_is_untouched(link, tiny_folder, tmp_path, capsys):
    jobs = _jobs(tmp_path / "jobs.jsonl", JOBS)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere.txt"
    out.mkdir()
    elsewhere.write_text("not a manifest\n")
    if link == "symbolic":
        (out / "manifest.jsonl").symlink_to(elsewhere)
    else:
        os.link(elsewhere, out / "manifest.jsonl")
    assert main(_cli(tiny_folder("sd3"), jobs, out)) == 2
    err = capsys.readouterr().err
    why = "is a symbolic link" if link == "symbolic" else "has other hard links"
    assert f"manifest.jsonl' {why}" in err and "Traceback" not in err
    assert elsewhere.read_text() == "not a manifest\n" and not list(out.glob("*.png"))


def test_images_and_temporary_files_are_not_written_through_links(tiny_folder, tmp_path):
    jobs = _jobs(tmp_path / "jobs.jsonl", JOBS)
    out, png, tmp = tmp_path / "out", tmp_path / "theirs.png", tmp_path / "theirs.tmp"
    out.mkdir()
    png.write_bytes(b"theirs")
    tmp.write_bytes(b"theirs")
    (out / "a-0.png").symlink_to(png)
    (out / ".b-0.png.tmp").symlink_to(tmp)
    assert main(_cli(tiny_folder("sd3"), jobs, out)) == 0
    assert png.read_bytes() == tmp.read_bytes() == b"theirs"
    assert not (out / "a-0.png").is_symlink() and Image.open(out / "a-0.png").size == (32, 32)


# -- resume checks what it resumes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tiny_folder, tmp_path_factory):
    """A finished run of JOBS: (folder, job file, {file: pixels})."""
    root = tmp_path_factory.mktemp("finished")
    jobs, out = _jobs(root / "jobs.jsonl", JOBS), root / "out"
    assert main(_cli(tiny_folder("sd3"), jobs, out)) == 0
    return out, jobs, {f"{j['id']}-0.png": _pixels(out / f"{j['id']}-0.png") for j in JOBS}


def _changed_prompt(tmp_path, jobs, model):
    return _jobs(jobs, [JOBS[0], {**JOBS[1], "prompt": "a green triangle"}]), model, ()


def _changed_steps(tmp_path, jobs, model):
    return jobs, model, ("--steps", "3")


def _changed_model(tmp_path, jobs, model):
    return jobs, shutil.copytree(model, tmp_path / "another-model"), ()


def _truncated_image(tmp_path, jobs, model):
    with (tmp_path / "out" / "a-0.png").open("r+b") as f:
        f.truncate(100)
    return jobs, model, ()


CHANGES = {  # change -> (what it does, the ids it changes, what the error says about the first)
    "prompt": (_changed_prompt, ["b-0"], "b-0: prompt: 'a blue square' recorded, 'a green triangle' now"),
    "steps": (_changed_steps, ["a-0", "b-0"], "a-0: num_inference_steps: 2 recorded, 3 now"),
    "model": (_changed_model, ["a-0", "b-0"], "a-0: model: '"),
    "truncated image": (_truncated_image, ["a-0"], "a-0: its image does not decode"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_resume_refuses_what_changed_and_redo_changed_makes_exactly_that(change, finished, tiny_folder, tmp_path,
                                                                         capsys):  # fmt: skip
    """A changed job, model or damaged image is not done: exit 2 naming the ids and the difference, nothing
    written; --redo-changed regenerates exactly those items, each id once in the manifest."""
    make_change, ids, message = CHANGES[change]
    folder, jobs, before = finished
    out = shutil.copytree(folder, tmp_path / "out")
    jobs, model, flags = make_change(tmp_path, shutil.copy(jobs, tmp_path / "jobs.jsonl"), tiny_folder("sd3"))
    manifest = (out / "manifest.jsonl").read_bytes()
    capsys.readouterr()
    assert main(_cli(str(model), jobs, out, *flags)) == 2
    err = capsys.readouterr().err
    assert f"{len(ids)} finished item(s) do not match" in err and message in err and "--redo-changed" in err
    assert ("a-0:" in err) == ("a-0" in ids) and ("b-0:" in err) == ("b-0" in ids)
    assert (out / "manifest.jsonl").read_bytes() == manifest
    assert main(_cli(str(model), jobs, out, *flags, "--redo-changed")) == 0
    assert f"{len(ids)} generated, {2 - len(ids)} already done" in capsys.readouterr().out
    records = _records(out)
    assert sorted(r["id"] for r in records) == ["a-0", "b-0"] and all(r["status"] == "ok" for r in records)
    assert sorted(p.name for p in out.glob("*.png")) == ["a-0.png", "b-0.png"] and not list(
        out.glob(".*.tmp")
    )
    for file, pixels in before.items():
        same = np.array_equal(_pixels(out / file), pixels)
        assert same == (file[:3] not in ids or change in ("model", "truncated image")), file
    assert main(_cli(str(model), jobs, out, *flags)) == 0  # now everything matches
