"""Batch engines beyond one process: Ray Data actors on a real local Ray cluster, and accelerate's process split.

Each engine must write the same files, PNG metadata and manifest as `--engine local`, every id once; a Ray actor
killed with SIGKILL mid-job is restarted and the job still ends with every item once and whole; a run killed as a
whole resumes. The Ray tests start a real local cluster (no mocks): they need `pip install -e ".[ray]"`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tools.cli import main

PROMPTS = [
    "a red circle",
    "a blue square",
    "a green triangle",
    "a red square",
    "a blue circle",
    "a green square",
]
JOBS = [{"id": f"j{i}", "prompt": p, "seed": i} for i, p in enumerate(PROMPTS)]


def _jobs(path, jobs=JOBS):
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def _cli(model, jobs, out, *extra, steps=2):
    return ["batch", str(jobs), "--out", str(out), "--model", model, "--steps", str(steps), "--height", "32",
            "--width", "32", "--quiet", *extra]  # fmt: skip


def _run(args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _ids(jobs):
    """The item ids of one image per job, sorted (`<id>-<k>`)."""
    return sorted(f"{j['id']}-0" for j in jobs)


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _images(out):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}


def _comparable(records):
    """Manifest records without what legitimately differs between runs (time)."""
    return sorted(({k: v for k, v in r.items() if k != "time"} for r in records), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def local_run(tiny_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    out = root / "out"
    assert main(_cli(tiny_folder("sd3"), _jobs(root / "jobs.jsonl"), out, "--batch-size", "2")) == 0
    return out


def test_engine_flags_are_checked_before_work(tiny_folder, tmp_path, capsys):
    jobs = _jobs(tmp_path / "jobs.jsonl")
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "o", "--workers", "2")) == 2
    assert "--workers is for --engine ray" in capsys.readouterr().err
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "o", "--engine", "ray", "--workers", "0")) == 2
    assert "argument --workers: '0' is not allowed; allowed: an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_without_ray_the_engine_says_how_to_install_it(tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray fails as where it is not installed
    jobs = _jobs(tmp_path / "jobs.jsonl")
    assert main(_cli(tiny_folder("sd3"), jobs, tmp_path / "o", "--engine", "ray")) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


ray = pytest.importorskip("ray", reason='the Ray engine tests need pip install -e ".[ray]"')


def test_ray_with_two_actors_writes_what_local_writes(local_run, tiny_folder, tmp_path):
    out = tmp_path / "out"
    result = _run(_cli(tiny_folder("sd3"), _jobs(tmp_path / "jobs.jsonl"), out, "--batch-size", "2", "--engine",
                       "ray", "--workers", "2"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 generated" in result.stdout
    records = _manifest(out)
    assert sorted(r["id"] for r in records) == _ids(JOBS)  # each id once
    assert not list(out.glob("manifest.rank*.jsonl")) and not list(out.glob(".*.tmp"))
    assert _comparable(records) == _comparable(_manifest(local_run))
    ours, theirs = _images(out), _images(local_run)
    assert ours.keys() == theirs.keys()
    for name in ours:  # the same groups as the local engine, so the same pixels
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    for name in ours:  # the A1111 text ends with the time it was made
        ours_text, theirs_text = (Image.open(o / name).text["parameters"] for o in (out, local_run))
        assert ours_text.rsplit(",", 1)[0] == theirs_text.rsplit(",", 1)[0]


def _actor_pids(out):
    return [int(p.name.removeprefix("manifest.rank-ray-").removesuffix(".jsonl"))
            for p in out.glob("manifest.rank-ray-*.jsonl")]  # fmt: skip


def _size(path) -> int:
    """The size of a file that may be merged away at any moment (0 once it is gone)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_a_killed_actor_is_replaced_and_every_item_ends_up_once(local_run, tiny_folder, tmp_path):
    """SIGKILL one actor by pid once it has written an item; Ray restarts it and retries its group."""
    out = tmp_path / "out"
    jobs = _jobs(tmp_path / "jobs.jsonl")
    cmd = [sys.executable, "-m", "tools.cli",
           *_cli(tiny_folder("sd3"), jobs, out, "--batch-size", "2", "--engine", "ray", "--workers", "2", steps=2)]  # fmt: skip
    process = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and process.poll() is None and killed is None:
        pids = [pid for pid in _actor_pids(out) if _size(out / f"manifest.rank-ray-{pid}.jsonl")]
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=600)
    assert killed is not None, "no actor wrote an item to kill"
    assert process.returncode == 0, stderr[-3000:]
    records = _manifest(out)
    assert sorted(r["id"] for r in records) == _ids(JOBS)
    ours, theirs = _images(out), _images(local_run)
    assert ours.keys() == theirs.keys() and not list(out.glob(".*.tmp"))
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_a_ray_run_killed_as_a_whole_resumes(local_run, tiny_folder, tmp_path):
    out = tmp_path / "out"
    more = JOBS + [{"id": f"k{i}", "prompt": p, "seed": 10 + i} for i, p in enumerate(PROMPTS * 2)]
    jobs = _jobs(tmp_path / "jobs.jsonl", more)
    args = _cli(tiny_folder("sd3"), jobs, out, "--batch-size", "2", "--engine", "ray", "--workers", "2")
    process = subprocess.Popen([sys.executable, "-m", "tools.cli", *args], start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not list(out.glob("*.png")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the actors it started
    process.wait()
    subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True, timeout=120
    )
    made = len(list(out.glob("*.png")))
    assert 0 < made < len(more), "the kill came too late to test a resume"
    result = _run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _manifest(out)
    assert sorted(r["id"] for r in records) == _ids(more)
    assert len(list(out.glob("*.png"))) == len(more) and not list(out.glob(".*.tmp"))
    for name, pixels in _images(local_run).items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), pixels, err_msg=name)


def test_accelerate_with_two_cpu_processes_gives_the_local_images(local_run, tiny_folder, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tools.cli",
           *_cli(tiny_folder("sd3"), _jobs(tmp_path / "jobs.jsonl"), out, "--batch-size", "2", "--engine",
                 "accelerate")]  # fmt: skip
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0: 3 generated" in result.stdout and "rank 1: 3 generated" in result.stdout
    records = _manifest(out)
    assert sorted(r["id"] for r in records) == _ids(JOBS)
    # accelerate's contiguous slices [j0..j2] [j3..j5] group (j2) and (j3, j4) where local groups (j2, j3) and
    # (j4, j5): a batch of another size may differ by one level
    ours = _images(out)
    assert ours.keys() == _images(local_run).keys()
    for name, pixels in _images(local_run).items():
        assert np.abs(ours[name].astype(int) - pixels.astype(int)).max() <= 1, name
