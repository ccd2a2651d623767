"""Batch generation jobs: validated job files, deterministic seeds, atomic outputs, a manifest, resume, ranks.

`headhunter batch JOBS --out DIR`: JOBS is JSONL (one object per line) or CSV with a header. Keys mirror the
pipelines' call arguments (see `FIELDS`). Each line becomes `num_images` items `<id>-<k>` with seed `seed + k`;
the id is the line's `id` or a hash of its resolved settings, so a rerun finds what is done. Every item is written
to a temporary file and renamed, then recorded in the manifest (JSONL); a rerun skips recorded items whose file
exists and redoes the rest. Under `accelerate launch` (RANK / WORLD_SIZE) each rank takes every WORLD_SIZE-th
item and keeps its own manifest; rank 0 merges them into `manifest.jsonl` at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guidance.config import SOFTPAG_SETTINGS, GuidanceError, Setting
from guidance.heads import HeadSelection, HeadSelectionError
from guidance.ranks import process_index
from pipelines.settings import png_parameters, save_png


def _setting_check(setting: Setting) -> Callable[[Any], bool]:
    """A FIELDS check from a config setting."""

    def check(value: Any) -> bool:
        try:
            setting.check(value)
        except GuidanceError:
            return False
        return True

    return check


# name -> (type check, description of what is allowed); None allowed for optional fields.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "id": (lambda v: isinstance(v, str) and 0 < len(v) <= 128 and all(c.isalnum() or c in "-_." for c in v),
           "a string of letters, digits, '-', '_', '.' (at most 128)"),
    "prompt": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "negative_prompt": (lambda v: v is None or isinstance(v, str), "a string"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**63, "an integer in [0, 2^63)"),
    "num_inference_steps": (lambda v: _is_int(v) and 1 <= v <= 1000, "an integer in [1, 1000]"),
    "height": (lambda v: v is None or (_is_int(v) and 8 <= v <= 4096), "an integer in [8, 4096]"),
    "width": (lambda v: v is None or (_is_int(v) and 8 <= v <= 4096), "an integer in [8, 4096]"),
    "guidance_scale": (lambda v: _is_num(v) and 0 <= v <= 100, "a number in [0, 100]"),
    "num_images": (lambda v: _is_int(v) and 1 <= v <= 1000, "an integer in [1, 1000]"),
}  # fmt: skip
PAG_KEYS = ("pag_heads", "pag_scale", "pag_strength", "pag_identity", "pag_start", "pag_stop")
# The SoftPAG keys are checked and defaulted by the config that owns them.
FIELDS.update(
    {key: (_setting_check(SOFTPAG_SETTINGS[key]), SOFTPAG_SETTINGS[key].allowed()) for key in PAG_KEYS}
)
FIELDS["pag_heads"] = (
    lambda v: v is None or isinstance(v, str),
    "a head string such as 'L1H10,L5H3' or a preset",
)
DEFAULTS = {"negative_prompt": None, "num_inference_steps": 28, "height": None, "width": None, "guidance_scale": 5.0,
            "num_images": 1, **{key: SOFTPAG_SETTINGS[key].default for key in PAG_KEYS}}  # fmt: skip
CALL_KEYS = ("negative_prompt", "num_inference_steps", "height", "width", "guidance_scale")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class JobFileError(ValueError):
    """A job file with problems; `problems` lists them as (line number, message)."""

    def __init__(self, path: str, problems: list[tuple[int, str]]):
        self.problems = problems
        lines = "\n".join(f"  line {n}: {m}" for n, m in problems)
        super().__init__(f"{path}: {len(problems)} problem(s), nothing was generated:\n{lines}")


@dataclass(frozen=True)
class Item:
    """One image to make: its id, output file name, seed and the resolved settings of its job line."""

    id: str
    line: int
    seed: int
    settings: dict

    @property
    def file(self) -> str:
        return f"{self.id}.png"


# -------------------------------------------------------------------------------------------------------------
# Reading and validating
# -------------------------------------------------------------------------------------------------------------


def _csv_value(text: str):
    """CSV cells are text: numbers become numbers, an empty cell means 'not given'."""
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_lines(path: str | Path) -> list[tuple[int, dict | str]]:
    """(line number, object) per job; a line that cannot be read yields (line number, error text)."""
    text = Path(path).read_text()
    rows: list[tuple[int, dict | str]] = []
    if str(path).lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        for n, row in enumerate(reader, start=2):
            rows.append((n, {k: _csv_value(v) for k, v in row.items() if v not in (None, "")}))
        return rows
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append((n, f"not valid JSON ({error.msg} at column {error.colno})"))
            continue
        rows.append(
            (n, obj if isinstance(obj, dict) else f"a job must be a JSON object, got {type(obj).__name__}")
        )
    return rows


def check_job(job: dict, heads_per_layer: dict | None, resolve_heads: Callable[[str], str]) -> list[str]:
    """Every problem of one job (after defaults), as messages naming the key, the value and what is allowed."""
    problems = [f"unknown key {k!r}; allowed: {', '.join(sorted(FIELDS))}" for k in job if k not in FIELDS]
    if "prompt" not in job:
        problems.append("missing key 'prompt'")
    for key, value in job.items():
        if key in FIELDS and not FIELDS[key][0](value):
            problems.append(f"{key}={value!r} is not allowed; use {FIELDS[key][1]}")
    if not problems and job.get("pag_start", 0) >= job.get("pag_stop", 1):
        problems.append(f"pag_start={job['pag_start']!r} must be below pag_stop={job['pag_stop']!r}")
    if not problems and job.get("pag_heads"):
        try:
            selection = HeadSelection.parse(resolve_heads(job["pag_heads"]), "pag_heads")
            if heads_per_layer is not None:
                selection.validate(heads_per_layer, "pag_heads")
        except HeadSelectionError as error:
            problems.append(str(error))
    return problems


def job_id(job: dict) -> str:
    """The line's `id`, or a hash of its resolved settings (stable across runs and line order)."""
    if "id" in job:
        return job["id"]
    content = json.dumps({k: v for k, v in job.items() if k != "num_images"}, sort_keys=True)
    return hashlib.sha1(content.encode()).hexdigest()[:12]


def plan(
    path: str | Path,
    defaults: dict,
    heads_per_layer: dict | None,
    resolve_heads: Callable[[str], str] = lambda h: h,
    skip_invalid: bool = False,
) -> tuple[list[Item], list[tuple[int, str]]]:
    """Validate every line, then expand valid lines into items. Raises JobFileError unless skip_invalid."""
    problems: list[tuple[int, str]] = []
    bad_defaults = check_job({"prompt": "-", **defaults}, heads_per_layer, resolve_heads)
    if bad_defaults:
        raise JobFileError("defaults", [(0, m) for m in bad_defaults])
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, job in read_lines(path):
        if isinstance(job, str):
            problems.append((n, job))
            continue
        resolved = {**DEFAULTS, **defaults, **job}
        messages = check_job(resolved, heads_per_layer, resolve_heads)
        ident = None if messages else job_id(resolved)
        if ident is not None and ident in seen:
            messages.append(f"id {ident!r} repeats line {seen[ident]}")
        if messages:
            problems += [(n, m) for m in messages]
            continue
        seen[ident] = n
        base_seed = resolved.get("seed", int(hashlib.sha1(ident.encode()).hexdigest()[:8], 16))
        settings = {k: v for k, v in resolved.items() if k not in ("id", "seed", "num_images")}
        for k in range(resolved["num_images"]):
            items.append(Item(f"{ident}-{k}", n, base_seed + k, settings))
    if problems and not skip_invalid:
        raise JobFileError(str(path), problems)
    return items, problems


# -------------------------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------------------------


def read_manifests(out: Path) -> dict[str, dict]:
    """Finished items by id, from manifest.jsonl and any per-rank manifests, whose files exist."""
    done: dict[str, dict] = {}
    for path in sorted(out.glob("manifest*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that item is redone
            if record.get("status") == "ok" and (out / record["file"]).is_file():
                done[record["id"]] = record
    return done


def batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive groups of at most `size` items with identical settings except prompt and seed."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        key = json.dumps({k: v for k, v in item.settings.items() if k != "prompt"}, sort_keys=True)
        group = groups.setdefault(key, [])
        group.append(item)
        if len(group) == size:
            yield groups.pop(key)
    yield from groups.values()


class BatchRunner:
    """Generate the items of a plan with one pipeline, writing PNGs and manifest lines as they finish."""

    def __init__(self, pipe, model: str, out: str | Path, batch_size: int = 1, resolve_heads=lambda h: h,
                 extras: dict | None = None):  # fmt: skip
        from importlib.metadata import PackageNotFoundError, version

        self.pipe, self.model, self.out, self.batch_size = pipe, model, Path(out), batch_size
        self.resolve_heads = resolve_heads
        self.extras = extras or {}  # call arguments the model needs (see pipelines.cli.model_call_extras)
        try:
            self.version = version("headhunter-diffusion")
        except PackageNotFoundError:
            self.version = "unknown"
        self.rank, self.world = process_index()
        self.manifest = self.out / (
            "manifest.jsonl" if self.world == 1 else f"manifest.rank{self.rank}.jsonl"
        )

    def _record(self, record: dict) -> None:
        with self.manifest.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _generate(self, group: list[Item]):
        import torch

        settings = group[0].settings
        call = {**self.extras, **{k: settings[k] for k in CALL_KEYS if settings.get(k) is not None}}
        if call.get("negative_prompt") is not None:
            call["negative_prompt"] = [call["negative_prompt"]] * len(group)
        if settings.get("pag_heads"):
            call.update({k: settings[k] for k in PAG_KEYS})
            call["pag_heads"] = self.resolve_heads(settings["pag_heads"])
        generators = [torch.Generator().manual_seed(item.seed) for item in group]
        return self.pipe([item.settings["prompt"] for item in group], generator=generators, **call).images

    def run(self, items: list[Item], progress: bool = True) -> dict:
        """Generate what is not done yet (this rank's share); returns counts."""
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        done = read_manifests(self.out)
        mine = [item for i, item in enumerate(items) if i % self.world == self.rank and item.id not in done]
        for item in mine:
            (self.out / f".{item.file}.tmp").unlink(missing_ok=True)  # a partial file from a killed run
        counts = {"done_before": sum(item.id in done for item in items), "ok": 0, "failed": 0}
        start = time.perf_counter()
        bar = tqdm(total=len(mine), desc=f"batch rank {self.rank}" if self.world > 1 else "batch", unit="img",
                   disable=not progress)  # fmt: skip
        for group in batches(mine, self.batch_size):
            try:
                images = self._generate(group)
            except Exception as error:  # noqa: BLE001 (a failing item is reported and skipped)
                for item in group:
                    self._record(
                        {
                            "id": item.id,
                            "line": item.line,
                            "status": "error",
                            "error": f"{type(error).__name__}: {error}",
                        }
                    )
                counts["failed"] += len(group)
                bar.update(len(group))
                continue
            for item, image in zip(group, images, strict=True):
                record = {"id": item.id, "file": item.file, "seed": item.seed, "line": item.line, **item.settings,
                          "model": self.model, "version": self.version,
                          "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
                params = {
                    k: v for k, v in record.items() if k not in ("file", "line", "time", "status", "prompt")
                }
                save_png(
                    image,
                    self.out / item.file,
                    png_parameters(item.settings["prompt"], item.settings.get("negative_prompt"), params),
                    record,
                )
                self._record({**record, "status": "ok"})
                counts["ok"] += 1
            bar.update(len(group))
        bar.close()
        counts["seconds"] = time.perf_counter() - start
        counts["items_per_second"] = counts["ok"] / counts["seconds"] if counts["seconds"] else 0.0
        return counts

    def merge(self) -> Path:
        """Rank 0 after all ranks: fold per-rank manifests into manifest.jsonl (one line per finished item)."""
        done = read_manifests(self.out)
        errors = []
        for path in self.out.glob("manifest*.jsonl"):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("status") == "error" and record["id"] not in done:
                    errors.append(record)
        merged = self.out / "manifest.jsonl"
        tmp = self.out / ".manifest.jsonl.tmp"
        with tmp.open("w") as f:
            for record in [*sorted(done.values(), key=lambda r: r["id"]), *errors]:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        tmp.replace(merged)
        for path in self.out.glob("manifest.rank*.jsonl"):
            path.unlink()
        return merged


def print_problems(problems: list[tuple[int, str]], stream=sys.stderr) -> None:
    """One line per problem, with its line number."""
    for n, message in problems:
        print(f"line {n}: {message}", file=stream)
