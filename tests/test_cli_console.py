"""A plain `headhunter generate`, `search` and `batch` print nothing on stderr but their own lines: no library
notice (transformers' torchvision fallbacks, given while the libraries import; diffusers' own deprecations), no
loading bar, no T5 truncation notice for a toy model run at the T5 length it was trained at; `--verbose` brings
the libraries' lines back (`tools/console.py`). Each command runs in a fresh interpreter, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tiny_families import tiny_family
from tools.settings import ASSETS

ROOT = Path(__file__).resolve().parent.parent
TOY = ASSETS / "toy-sd3"
LIBRARY_LINES = ("[transformers]", "Loading pipeline components", "Loading weights", "truncated because",
                 "FutureWarning", "Warning")  # fmt: skip
needs_toy = pytest.mark.skipif(not (TOY / "model_index.json").exists(), reason="assets/toy-sd3 not present")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _library_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(text in line for text in LIBRARY_LINES)]


@needs_toy
def test_a_plain_generate_prints_nothing_on_stderr_and_verbose_brings_the_libraries_back(tmp_path):
    """The toy SD3 runs with T5 length 1 (it was trained so): no truncation notice either."""
    args = ["generate", "a blue square on the left", "--model", str(TOY), "--steps", "1"]
    quiet = _cli([*args, "--out", "q.png"], tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout.strip() == "q.png"
    loud = _cli([*args, "--out", "v.png", "--verbose"], tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "Loading pipeline components" in loud.stderr and "requires torchvision" in loud.stderr


@needs_toy
def test_a_plain_search_and_batch_print_only_their_own_lines(tmp_path):
    search = _cli(["search", "--model", str(TOY), "--objective", "saturation", "--prompt", "a blue square",
                   "--seeds", "0", "--k", "1", "--steps", "1", "--layers", "--out", "s"], tmp_path)  # fmt: skip
    assert search.returncode == 0, search.stderr
    # What stays is ours: the search's own progress bar.
    assert "head search images" in search.stderr
    assert [
        line for line in search.stderr.splitlines() if line.strip() and "head search images" not in line
    ] == []
    (tmp_path / "jobs.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "prompt": "a green circle on the right"}) + "\n" for i in range(3))
    )
    batch = _cli(["batch", "jobs.jsonl", "--model", str(TOY), "--out", "b", "--batch-size", "2", "--steps", "1"],
                 tmp_path)  # fmt: skip
    assert batch.returncode == 0, batch.stderr
    assert _library_lines(batch.stderr) == [] and "batch" in batch.stderr  # its own progress bar only
    quiet = _cli(
        ["batch", "jobs.jsonl", "--model", str(TOY), "--out", "c", "--quiet", "--steps", "1"], tmp_path
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_newer_family_prints_no_library_deprecation(tmp_path):
    """Chroma's modules import a diffusers class from its deprecated place (a FutureWarning of diffusers against
    itself, nothing a user can change): dropped like the notices."""
    tiny_family("chroma").save_pretrained(tmp_path / "chroma")
    run = _cli(["generate", "a red circle", "--model", "chroma", "--steps", "1", "--height", "16", "--width", "16",
                "--pag-heads", "L0H0", "--out", "c.png"], tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
