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
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guidance.config import GENERATION_SETTINGS, SOFTPAG_SETTINGS, GuidanceError, Setting
from guidance.heads import HeadSelection, HeadSelectionError, short_repr
from guidance.ranks import process_index
from pipelines.settings import png_parameters, save_png

PAG_KEYS = ("pag_heads", "pag_scale", "pag_strength", "pag_identity", "pag_start", "pag_stop")
GENERATION_KEYS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "height", "width", "guidance_scale",
                   "num_images")  # fmt: skip
# Every job key but `id` is checked by the config setting that owns it.
SETTINGS: dict[str, Setting] = {
    **{key: GENERATION_SETTINGS[key] for key in GENERATION_KEYS},
    **{key: SOFTPAG_SETTINGS[key] for key in PAG_KEYS},
}
ID_ALLOWED = "a string of letters, digits, '-', '_', '.' (at most 128)"
# name -> (check, what is allowed), for readers of the job format (docs, tests).
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "id": (lambda v: _id_ok(v), ID_ALLOWED),
    **{key: (lambda v, s=setting: _passes(s, v), setting.allowed()) for key, setting in SETTINGS.items()},
}
DEFAULTS = {key: SETTINGS[key].default for key in (*GENERATION_KEYS[1:], *PAG_KEYS) if key != "seed"}
CALL_KEYS = ("negative_prompt", "num_inference_steps", "height", "width", "guidance_scale")
MAX_JOB_BYTES = 64 * 1024 * 1024


def _id_ok(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 128
        and value.isascii()
        and all(c.isalnum() or c in "-_." for c in value)
        and value not in (".", "..")
    )


def _passes(setting: Setting, value: Any) -> bool:
    try:
        setting.check(value)
    except GuidanceError:
        return False
    return True


class JobFileError(ValueError):
    """A job file with problems; `problems` lists them as (line number, message)."""

    def __init__(self, path: str, problems: list[tuple[int, str]], message: str | None = None):
        self.problems = problems
        if message is None:
            lines = "\n".join(f"  line {n}: {m}" for n, m in problems)
            message = f"{len(problems)} problem(s), nothing was generated:\n{lines}"
        super().__init__(f"{path}: {message}")


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


_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf)", re.I | re.ASCII
)


def _csv_value(key: str, text: str):
    """A CSV cell: numeric fields become numbers where the text is one; everything else stays a string."""
    kind = SETTINGS[key].kind if key in SETTINGS else "text"
    cell = text.strip()
    if kind == "integer" and _INTEGER.fullmatch(cell):
        return int(cell)
    if kind == "number" and _NUMBER.fullmatch(cell):
        return float(cell)
    return text


def read_job_text(path: str | Path) -> str:
    """The job file as text, or JobFileError naming it (missing, unreadable, too large, binary, not UTF-8)."""
    file = Path(path)
    try:
        if not file.is_file():
            raise JobFileError(str(path), [], "no such file")
        if file.stat().st_size > MAX_JOB_BYTES:
            raise JobFileError(str(path), [], f"larger than {MAX_JOB_BYTES // 2**20} MiB")
        data = file.read_bytes()
    except OSError as error:
        raise JobFileError(short_repr(str(path)), [], f"cannot be read: {error.strerror or error}") from None
    if b"\0" in data:
        raise JobFileError(str(path), [], "a binary file, not a JSONL or CSV job file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise JobFileError(str(path), [], f"not UTF-8 text (byte {error.start})") from None


def _csv_lines(text: str) -> list[tuple[int, dict | str]]:
    """(line number, job or error) per CSV row under the header; numeric fields converted (`_csv_value`)."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if len(set(header)) != len(header) or "" in header:
        return [(1, f"the header {header} needs distinct, non-empty column names")]
    rows: list[tuple[int, dict | str]] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            rows.append((reader.line_num, f"{len(row)} cells, but the header has {len(header)} columns"))
            continue
        rows.append((reader.line_num, {k: _csv_value(k, v) for k, v in zip(header, row) if v != ""}))
    return rows


def _jsonl_lines(text: str) -> list[tuple[int, dict | str]]:
    """(line number, job or error) per non-blank, non-comment JSONL line."""
    rows: list[tuple[int, dict | str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append((n, f"not valid JSON ({error.msg} at column {error.colno})"))
            continue
        except RecursionError:
            rows.append((n, "not valid JSON (nested too deeply)"))
            continue
        rows.append(
            (n, obj if isinstance(obj, dict) else f"a job must be a JSON object, got {type(obj).__name__}")
        )
    return rows


def read_lines(path: str | Path) -> list[tuple[int, dict | str]]:
    """(line number, object) per job; a line that cannot be read yields (line number, error text).

    CSV keeps every cell a string except the numeric fields (steps, seed, scales...), so ids such as `007`
    and prompts such as `1984` stay as written."""
    text = read_job_text(path)
    rows = _csv_lines(text) if str(path).lower().endswith(".csv") else _jsonl_lines(text)
    if not rows:
        raise JobFileError(str(path), [], "holds no jobs (it is empty, or only blank lines and comments)")
    return rows


def _check_value(key: str, value: Any) -> str | None:
    """The problem with one job value, or None."""
    if key == "id":
        return None if _id_ok(value) else f"id={short_repr(value)} is not allowed; use {ID_ALLOWED}"
    try:
        SETTINGS[key].check(value)
    except GuidanceError as error:
        return str(error)
    return None


def check_job(job: dict, heads_per_layer: dict | None, resolve_heads: Callable[..., str]) -> list[str]:
    """Every problem of one job (after defaults), as messages naming the key, the value and what is allowed."""
    problems = [
        f"unknown key {short_repr(k)}; allowed: {', '.join(sorted(FIELDS))}" for k in job if k not in FIELDS
    ]
    if "prompt" not in job:
        problems.append("missing key 'prompt'")
    problems += [p for key, value in job.items() if key in FIELDS and (p := _check_value(key, value))]
    if not problems and job.get("pag_start", 0) >= job.get("pag_stop", 1):
        problems.append(f"pag_start={job['pag_start']!r} must be below pag_stop={job['pag_stop']!r}")
    if not problems and job.get("pag_heads"):
        try:
            selection = HeadSelection.parse(resolve_heads(job["pag_heads"], "pag_heads"), "pag_heads")
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
    resolve_heads: Callable[..., str] = lambda heads, parameter="pag_heads": heads,
    skip_invalid: bool = False,
) -> tuple[list[Item], list[tuple[int, str]]]:
    """Validate every line, then expand valid lines into items. Raises JobFileError unless skip_invalid."""
    problems: list[tuple[int, str]] = []
    bad_defaults = check_job({"prompt": "-", **defaults}, heads_per_layer, resolve_heads)
    if bad_defaults:
        raise JobFileError("defaults (model folder, --config, flags)", [], "; ".join(bad_defaults))
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
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that item is redone
            if (
                not isinstance(record, dict)
                or record.get("status") != "ok"
                or not isinstance(record.get("file"), str)
            ):
                continue
            if (out / record["file"]).is_file():
                done[record["id"]] = record
    return done


def repair_manifest(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so that the next record starts a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive groups of at most `size` items with identical settings except prompt and seed.

    The groups depend only on the plan, never on what is already done: a resumed run regenerates a partly
    written group whole, so every image is the one an uninterrupted run makes (see docs/reliability.md)."""
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

    def __init__(self, pipe, model: str, out: str | Path, batch_size: int = 1,
                 resolve_heads=lambda heads, parameter="pag_heads": heads,
                 extras: dict | None = None):  # fmt: skip
        from importlib.metadata import PackageNotFoundError, version

        GENERATION_SETTINGS["batch_size"].check(batch_size, GuidanceError, "batch_size")
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
            call["pag_heads"] = self.resolve_heads(settings["pag_heads"], "pag_heads")
        generators = [torch.Generator().manual_seed(item.seed) for item in group]
        return self.pipe([item.settings["prompt"] for item in group], generator=generators, **call).images

    def run(self, items: list[Item], progress: bool = True) -> dict:
        """Generate what is not done yet (this rank's share); returns counts.

        Groups are formed over the whole share, done items included; a group with any item left is generated
        whole and only its missing items are written, so a resume gives the images of an uninterrupted run."""
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        repair_manifest(self.manifest)
        done = read_manifests(self.out)
        share = [item for i, item in enumerate(items) if i % self.world == self.rank]
        for item in share:
            if item.id not in done:
                (self.out / f".{item.file}.tmp").unlink(missing_ok=True)  # a partial file from a killed run
        counts = {"done_before": sum(item.id in done for item in items), "ok": 0, "failed": 0}
        start = time.perf_counter()
        bar = tqdm(total=sum(item.id not in done for item in share), unit="img", disable=not progress,
                   desc=f"batch rank {self.rank}" if self.world > 1 else "batch")  # fmt: skip
        for group in batches(share, self.batch_size):
            todo = [item for item in group if item.id not in done]
            if todo:
                self._run_group(group, todo, counts)
                bar.update(len(todo))
        bar.close()
        counts["seconds"] = time.perf_counter() - start
        counts["items_per_second"] = counts["ok"] / counts["seconds"] if counts["seconds"] else 0.0
        return counts

    def _run_group(self, group: list[Item], todo: list[Item], counts: dict) -> None:
        """Generate one group; write and record its `todo` items, or record their error."""
        try:
            images = dict(zip((item.id for item in group), self._generate(group), strict=True))
        except Exception as error:  # noqa: BLE001 (a failing group is reported and skipped)
            for item in todo:
                self._record({"id": item.id, "line": item.line, "status": "error",
                              "error": f"{type(error).__name__}: {' '.join(str(error).split())}"})  # fmt: skip
            counts["failed"] += len(todo)
            return
        for item in todo:
            record = {"id": item.id, "file": item.file, "seed": item.seed, "line": item.line, **item.settings,
                      "model": self.model, "version": self.version,
                      "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
            params = {
                k: v for k, v in record.items() if k not in ("file", "line", "time", "status", "prompt")
            }
            parameters = png_parameters(item.settings["prompt"], item.settings.get("negative_prompt"), params)
            save_png(images[item.id], self.out / item.file, parameters, record)
            self._record({**record, "status": "ok"})
            counts["ok"] += 1

    def merge(self) -> Path:
        """Rank 0 after all ranks: fold per-rank manifests into manifest.jsonl (one line per finished item)."""
        done = read_manifests(self.out)
        errors = []
        for path in self.out.glob("manifest*.jsonl"):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if (
                    isinstance(record, dict)
                    and record.get("status") == "error"
                    and record.get("id") not in done
                ):
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
